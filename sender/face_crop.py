"""Face-following crop for the sender (``kpvid-send --crop auto``).

:class:`FaceCrop` is fed the source's frames and answers the square to cut out of each: about
:data:`SIDE_FACTOR` times the face's side, centred a little below the face's centre (a
head-and-shoulders framing like FOMM's VoxCeleb pre-processing), clamped to the frame. Faces
are found with OpenCV's Haar cascade (shipped in opencv-python's ``cv2.data``; nothing is
downloaded) on a grey copy of the frame shrunk to :data:`DETECT_LONG_SIDE` pixels, and only
every ``detect_every`` frames, on a frame that is decoded anyway. At that size the cascade finds
faces down to about 1/8 of the frame's longest side (some 150 px of a 1280 x 720 camera);
smaller ones go unseen (``--crop x,y,w,h`` frames them by hand).

The crop is held steady, because every move of the crop is motion the keypoints carry and the
model has to undo: it stays where it is while the face still fits it and moves only when the
crop the face now calls for is centred more than :data:`MOVE_FRACTION` of the crop's side away
from it, or is more than :data:`SIZE_TOLERANCE` bigger or smaller, on :data:`CONFIRM_CHECKS`
checks in a row (one stray detection does not move it). It then jumps straight to the new crop,
which puts the face back in the middle: that is the hysteresis (it takes a drift of the whole
threshold again to move it back), and a jump costs one frame that moves, where a glide over a few
frames would make each of them move (global motion the keypoints must encode and the edge's
predictor must guess on the frames it predicts).

Until a face is first seen the crop is the centre crop (logged once as a warning); a face lost
later keeps the last crop. :attr:`FaceCrop.checks` and :attr:`FaceCrop.misses` count the
detector runs and those that found no face, :attr:`FaceCrop.frames_without_face` the frames
sent meanwhile, :attr:`FaceCrop.moves` the crop's moves.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import cv2
import numpy as np

from .sources import Crop, centre_crop

log = logging.getLogger(__name__)

# the framing the models are trained on (photo talking heads: 1.9-2.5 forehead-to-chin heights,
# centred 0.08-0.2 of it below the face; a Haar box is about that height, 0.07 of it higher)
SIDE_FACTOR = 2.2           # crop side / face box side
DOWN_SHIFT = 0.2            # crop centre below the face box centre, in face box sides
MOVE_FRACTION = 0.15        # move when the wanted crop's centre is this far off (of the side)
SIZE_TOLERANCE = 0.3        # ... or when its side is this much bigger (or 1/1.3 smaller)
CONFIRM_CHECKS = 2          # ... on this many checks in a row
DETECT_LONG_SIDE = 320      # the detector sees the frame shrunk to this longest side
DETECT_INTERVAL_S = 0.5     # sources look for the face about this often
CASCADE_FILE = "haarcascade_frontalface_default.xml"
HAAR_SCALE_FACTOR = 1.15
HAAR_MIN_NEIGHBORS = 5
HAAR_MIN_SIZE = 24          # pixels of the shrunk frame (the cascade's own window)

Box = tuple[int, int, int, int]
"""A face box (x, y, w, h) in the frame's pixels."""

Detector = Callable[[np.ndarray], list[Box]]
"""Frame (H x W x 3 RGB or H x W grey, uint8) -> face boxes in its pixels."""


class FaceCropError(RuntimeError):
    """The face detector cannot be set up (e.g. its cascade file is missing)."""


def detect_every_frames(fps: float, interval_s: float = DETECT_INTERVAL_S) -> int:
    """Frames between face checks for a source at ``fps`` (at least 1)."""
    return max(1, round(interval_s * fps))


class HaarFaceDetector:
    """OpenCV's frontal-face Haar cascade on a grey, equalised copy of the frame shrunk to
    ``long_side`` pixels; boxes come back in the frame's pixels, largest first."""

    def __init__(self, long_side: int = DETECT_LONG_SIDE, cascade_path: str | None = None):
        if long_side < HAAR_MIN_SIZE:
            raise ValueError(f"long_side must be >= {HAAR_MIN_SIZE}, got {long_side}")
        path = cascade_path or cv2.data.haarcascades + CASCADE_FILE
        self.long_side = long_side
        self._cascade = cv2.CascadeClassifier(path)
        if self._cascade.empty():
            raise FaceCropError(f"could not load the face detector's cascade {path}")

    def __call__(self, frame: np.ndarray) -> list[Box]:
        grey = frame if frame.ndim == 2 else cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY)
        height, width = grey.shape[:2]
        scale = min(1.0, self.long_side / max(width, height))
        if scale < 1.0:
            size = (max(1, round(width * scale)), max(1, round(height * scale)))
            grey = cv2.resize(grey, size, interpolation=cv2.INTER_AREA)
        grey = cv2.equalizeHist(np.ascontiguousarray(grey, dtype=np.uint8))
        found = self._cascade.detectMultiScale(grey, scaleFactor=HAAR_SCALE_FACTOR,
                                               minNeighbors=HAAR_MIN_NEIGHBORS,
                                               minSize=(HAAR_MIN_SIZE, HAAR_MIN_SIZE))
        boxes = [(round(x / scale), round(y / scale), round(w / scale), round(h / scale))
                 for x, y, w, h in np.asarray(found).reshape(-1, 4).tolist()]
        return sorted(boxes, key=lambda box: box[2] * box[3], reverse=True)


def face_crop_box(face: Box, width: int, height: int, side_factor: float = SIDE_FACTOR,
                  down_shift: float = DOWN_SHIFT) -> Crop:
    """The square framing ``face`` in a ``width`` x ``height`` frame: ``side_factor`` times its
    side, centred ``down_shift`` sides below its centre, moved inside the frame (and shrunk to the
    largest square that fits when it is bigger)."""
    x, y, w, h = face
    face_side = max(w, h)
    side = max(1, min(round(side_factor * face_side), width, height))
    centre_x = x + w / 2
    centre_y = y + h / 2 + down_shift * face_side
    left = min(max(round(centre_x - side / 2), 0), width - side)
    top = min(max(round(centre_y - side / 2), 0), height - side)
    return Crop(left, top, side, side)


def needs_move(current: Crop, wanted: Crop, move_fraction: float = MOVE_FRACTION,
               size_tolerance: float = SIZE_TOLERANCE) -> bool:
    """True when ``wanted`` is centred more than ``move_fraction`` of ``current``'s side away
    from ``current`` (on either axis), or its side differs by more than ``size_tolerance``."""
    ratio = wanted.w / current.w
    if ratio > 1 + size_tolerance or ratio < 1 / (1 + size_tolerance):
        return True
    limit = move_fraction * current.w
    return (abs((wanted.x + wanted.w / 2) - (current.x + current.w / 2)) > limit
            or abs((wanted.y + wanted.h / 2) - (current.y + current.h / 2)) > limit)


class FaceCrop:
    """The steady face-following crop of a ``width`` x ``height`` source (module docstring).

    Call :meth:`update` with every frame that is decoded (RGB, or grey) and :meth:`skip` for every
    frame passed over undecoded; the face is looked for on the first decoded frame and then on the
    first decoded one at least ``detect_every`` frames after the last check. ``detector`` replaces
    the Haar cascade (tests).
    """

    def __init__(self, width: int, height: int, *, detect_every: int = 1,
                 side_factor: float = SIDE_FACTOR, down_shift: float = DOWN_SHIFT,
                 move_fraction: float = MOVE_FRACTION, size_tolerance: float = SIZE_TOLERANCE,
                 confirm: int = CONFIRM_CHECKS, detector: Detector | None = None):
        if width < 1 or height < 1:
            raise ValueError(f"frame size must be positive, got {width}x{height}")
        if detect_every < 1 or confirm < 1:
            raise ValueError(f"detect_every and confirm must be >= 1, got {detect_every}, "
                             f"{confirm}")
        if side_factor <= 0 or move_fraction <= 0 or size_tolerance <= 0:
            raise ValueError("side_factor, move_fraction and size_tolerance must be > 0")
        self.width, self.height = width, height
        self.detect_every = detect_every
        self.side_factor, self.down_shift = side_factor, down_shift
        self.move_fraction, self.size_tolerance = move_fraction, size_tolerance
        self.confirm = confirm
        self.detector: Detector = detector if detector is not None else HaarFaceDetector()
        self.crop: Crop = centre_crop(width, height)
        """The crop in use: the centre crop until a face is found, then the face's."""
        self.face: Box | None = None
        """The face found by the latest check (None: none found)."""
        self.framed = False
        """True once the crop has been placed on a face."""
        self.checks = 0
        """Detector runs."""
        self.misses = 0
        """Detector runs that found no face."""
        self.moves = 0
        """Times the crop moved (the first placement on a face included)."""
        self.frames_without_face = 0
        """Frames (decoded or skipped) sent while the latest check had found no face."""
        self._age = detect_every  # frames since the last check: the first decoded frame checks
        self._pending: Crop | None = None  # a move seen on the last check, to be confirmed
        self._pending_count = 0
        self._warned = False
        self._detector_failed = False

    def skip(self) -> None:
        """A frame passed over without being decoded: counts towards the next check."""
        self._age += 1
        self._count_faceless()

    def update(self, frame: np.ndarray) -> Crop:
        """The crop for ``frame`` (H x W x 3 RGB or H x W grey, uint8), checking for the face
        first when a check is due."""
        height, width = frame.shape[:2]
        if (width, height) != (self.width, self.height):
            log.warning("frame size changed from %dx%d to %dx%d: face crop starts again",
                        self.width, self.height, width, height)
            self.width, self.height = width, height
            self.crop, self.framed, self.face, self._pending = (
                centre_crop(width, height), False, None, None)
            self._age = self.detect_every
        if self._age >= self.detect_every:
            self._age = 0
            self._check(frame)
        self._age += 1
        self._count_faceless()
        return self.crop

    def _count_faceless(self) -> None:
        if self.checks and self.face is None:
            self.frames_without_face += 1

    def _detect(self, frame: np.ndarray) -> list[Box]:
        try:
            return self.detector(frame)
        except cv2.error as exc:  # never let the crop stop the stream
            if not self._detector_failed:
                log.warning("face detector failed (%s): counted as no face", exc)
                self._detector_failed = True
            return []

    def _check(self, frame: np.ndarray) -> None:
        faces = [face for face in self._detect(frame) if face[2] > 0 and face[3] > 0]
        self.checks += 1
        if not faces:
            self._miss()
            return
        wanted = [face_crop_box(face, self.width, self.height, self.side_factor,
                                self.down_shift) for face in faces]
        if not self.framed:
            self.face = faces[0]
            self._move(wanted[0])
            log.info("face found (%d px): crop %s", max(faces[0][2:]), self.crop)
            return
        for face, crop in zip(faces, wanted):
            if not self._moves_to(crop, self.crop):
                self.face = face  # a face still fits the crop: keep it
                self._pending, self._pending_count = None, 0
                return
        self.face = faces[0]  # the largest
        if self._pending is not None and not self._moves_to(wanted[0], self._pending):
            self._pending_count += 1
        else:
            self._pending_count = 1
        self._pending = wanted[0]
        if self._pending_count >= self.confirm:
            log.debug("face moved: crop %s -> %s", self.crop, wanted[0])
            self._move(wanted[0])

    def _moves_to(self, wanted: Crop, current: Crop) -> bool:
        return needs_move(current, wanted, self.move_fraction, self.size_tolerance)

    def _move(self, crop: Crop) -> None:
        self.framed = True
        self._pending, self._pending_count = None, 0
        if crop != self.crop:
            self.crop = crop
            self.moves += 1

    def _miss(self) -> None:
        self.misses += 1
        self._pending, self._pending_count = None, 0
        if self.face is not None:
            log.debug("face lost: keeping crop %s", self.crop)
        self.face = None
        if not self.framed and not self._warned:
            self._warned = True
            log.warning("no face found: sending the centre crop %s until one is (still "
                        "looking; --crop center turns this off)", self.crop)

    def summary(self) -> str:
        """One line of counts for the sender's summary."""
        return (f"face crop: {self.moves} move{'' if self.moves == 1 else 's'}, no face in "
                f"{self.misses} of {self.checks} check{'' if self.checks == 1 else 's'} "
                f"({self.frames_without_face} frames), crop {self.crop}")
