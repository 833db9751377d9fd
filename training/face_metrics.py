"""Real-face scores of a rebuilt video against its input: the PSNR gain over a frozen first
frame, and, through MediaPipe FaceMesh (a detector the model never trained with), the landmark
error and the mouth-opening correlation.

Videos are T x H x W x 3 arrays. FaceMesh looks at every frame resized to 256 x 256, large
enough for it to find a face filling a 64 x 64 frame, in static mode (every frame on its own,
so the scores do not depend on frame order).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from types import TracebackType

import cv2
import numpy as np

from kpvid.models.facemesh import (
    FACE_OVAL,
    FACE_SIZE,
    INSTALL_HINT,
    FaceMesh,
    FaceMeshUnavailable,
    facemesh_available,
    inter_ocular,
    mouth_opening,
    to_face_size,
)

log = logging.getLogger(__name__)

# below this standard deviation of the input's mouth opening (in inner mouth widths) the mouth
# does not move: FaceMesh's own jitter on a still face is about 0.005
MIN_MOUTH_STD = 0.01
MIN_MOUTH_FRAMES = 3  # a correlation over fewer frames is meaningless
FACE_MEAN_KEYS = ("landmark_error", "landmark_missed", "mouth_correlation",
                  "mouth_correlation_undefined", "mouth_correlation_pooled",
                  "truth_landmark_error", "truth_mouth_correlation",
                  "truth_mouth_correlation_pooled", "truth_input_landmark_error",
                  "truth_input_mouth_correlation")
# slots of the renderer's landmark tracks (TRACKED_LANDMARKS of the photo talking heads)
TRUTH_SLOTS = {"eyes": (0, 1), "lips": (5, 6), "corners": (3, 4)}


def frame_psnr(pred: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Per-frame PSNR in dB (T,) of T x H x W x C frames, uint8 (peak 255) or float in [0, 1]
    (peak 1), MSE floored at 1e-10 of the peak squared as in :func:`metrics.psnr`."""
    peak = 255.0 if target.dtype == np.uint8 else 1.0
    diff = pred.astype(np.float64) - target.astype(np.float64)
    mse = (diff.reshape(len(diff), -1) ** 2).mean(1) / peak**2
    return -10 * np.log10(np.maximum(mse, 1e-10))


def psnr_gain_frozen(input_video: np.ndarray, output_video: np.ndarray) -> float | None:
    """Mean PSNR of the output against the input over frames 1..T-1 minus that of the input's
    frame 0 held frozen (dB): what driving the frames adds over showing the source; None for a
    single frame."""
    if len(input_video) < 2:
        return None
    target = input_video[1:]
    frozen = np.broadcast_to(input_video[:1], target.shape)
    return float(frame_psnr(output_video[1:], target).mean() - frame_psnr(frozen, target).mean())


def landmark_error(reference: np.ndarray, points: np.ndarray) -> float:
    """Mean 2-D distance between corresponding landmarks of two (468, >= 2) sets, in units of
    the reference's inter-ocular distance."""
    distance = np.linalg.norm(points[:, :2] - reference[:, :2], axis=1).mean()
    return float(distance / max(inter_ocular(reference), 1e-6))


def pearson(x: np.ndarray, y: np.ndarray) -> float | None:
    """Pearson correlation of ``y`` with ``x``; None (undefined) when there are fewer than
    MIN_MOUTH_FRAMES values or ``x`` hardly varies (std < MIN_MOUTH_STD); 0 when ``x`` varies
    but ``y`` is constant (a frozen mouth follows nothing)."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    if len(x) < MIN_MOUTH_FRAMES or x.std() < MIN_MOUTH_STD:
        return None
    if y.std() == 0:
        return 0.0
    return float(np.corrcoef(x, y)[0, 1])


@dataclass
class FaceScores:
    """FaceMesh scores of one output clip against its input."""

    landmark_error: float | None  # mean over frames where both faces were found; None if none
    landmark_missed: int  # frames where either face was not found, left out
    mouth_correlation: float | None  # Pearson over those frames; None when undefined
    # mouth openings of the input and the output on those frames (for a pooled correlation)
    input_mouth: np.ndarray = field(repr=False, default_factory=lambda: np.zeros(0))
    output_mouth: np.ndarray = field(repr=False, default_factory=lambda: np.zeros(0))
    keypoints_on_face: float | None = None  # share of the model's keypoints on the face
    # against the renderer's landmark tracks (photo talking heads only), so that FaceMesh judges
    # only the output: a FaceMesh-driven model's input keypoints are FaceMesh's own
    truth_landmark_error: float | None = None
    truth_mouth_correlation: float | None = None
    # FaceMesh on the input against the tracks: the floor of the two above
    truth_input_landmark_error: float | None = None
    truth_input_mouth_correlation: float | None = None
    truth_mouth: np.ndarray = field(repr=False, default_factory=lambda: np.zeros(0))
    truth_output_mouth: np.ndarray = field(repr=False, default_factory=lambda: np.zeros(0))


def _lip_gap(points: np.ndarray, lips: tuple[int, int], corners: tuple[int, int]) -> float:
    """Inner-lip gap over the distance between the mouth corners."""
    gap = np.linalg.norm(points[lips[0]] - points[lips[1]])
    return float(gap / max(np.linalg.norm(points[corners[0]] - points[corners[1]]), 1e-6))


def _against_tracks(tracks: np.ndarray, ids: list[int], points: Sequence[np.ndarray | None]
                    ) -> tuple[float, np.ndarray, np.ndarray] | None:
    """(landmark error, true mouth openings, found mouth openings) over the frames where
    FaceMesh found the face; None when it found none."""
    found = [(t, p[ids, :2]) for t, p in zip(tracks, points, strict=True) if p is not None]
    if not found:
        return None
    eyes, lips, corners = TRUTH_SLOTS["eyes"], TRUTH_SLOTS["lips"], TRUTH_SLOTS["corners"]
    error = float(np.mean([
        np.linalg.norm(p - t, axis=1).mean() / max(np.linalg.norm(t[eyes[0]] - t[eyes[1]]), 1e-6)
        for t, p in found]))
    return (error, np.array([_lip_gap(t, lips, corners) for t, _ in found]),
            np.array([_lip_gap(p, lips, corners) for _, p in found]))


def score_against_tracks(scores: FaceScores, tracks: np.ndarray, landmarks: Sequence[int],
                         input_points: Sequence[np.ndarray | None],
                         output_points: Sequence[np.ndarray | None]) -> None:
    """Fill ``scores``' truth_* fields from the renderer's tracks (T x K x 2, the positions of
    the FaceMesh ``landmarks`` in the frames' pixels) and FaceMesh's finds on the output (and,
    for the floor, on the input): mean distance over the K landmarks in the tracks'
    inter-ocular distances, and the correlation of the mouth openings (inner-lip gap over
    mouth-corner distance)."""
    ids = list(landmarks)
    output = _against_tracks(tracks, ids, output_points)
    if output is not None:
        scores.truth_landmark_error, scores.truth_mouth, scores.truth_output_mouth = output
        scores.truth_mouth_correlation = pearson(output[1], output[2])
    floor = _against_tracks(tracks, ids, input_points)
    if floor is not None:
        scores.truth_input_landmark_error = floor[0]
        scores.truth_input_mouth_correlation = pearson(floor[1], floor[2])


def score_landmarks(input_points: Sequence[np.ndarray | None],
                    output_points: Sequence[np.ndarray | None]) -> FaceScores:
    """Scores from per-frame landmarks of the input and the output (None: no face found)."""
    if len(input_points) != len(output_points):
        raise ValueError(f"{len(input_points)} input frames but {len(output_points)} output "
                         "frames")
    pairs = [(a, b) for a, b in zip(input_points, output_points)
             if a is not None and b is not None]
    errors = [landmark_error(a, b) for a, b in pairs]
    input_mouth = np.array([mouth_opening(a) for a, _ in pairs])
    output_mouth = np.array([mouth_opening(b) for _, b in pairs])
    return FaceScores(landmark_error=float(np.mean(errors)) if errors else None,
                      landmark_missed=len(input_points) - len(pairs),
                      mouth_correlation=pearson(input_mouth, output_mouth),
                      input_mouth=input_mouth, output_mouth=output_mouth)


def mean_face_scores(scores: Sequence[FaceScores] | None) -> dict[str, float | int | None]:
    """Over clips: mean landmark error, total frames missed, mean mouth correlation of the clips
    where it is defined, how many were not, and one correlation pooled over every clip's frames.
    All None for ``None`` (FaceMesh not used)."""
    if scores is None:
        return dict.fromkeys(FACE_MEAN_KEYS)
    errors = [s.landmark_error for s in scores if s.landmark_error is not None]
    correlations = [s.mouth_correlation for s in scores if s.mouth_correlation is not None]
    truth_errors = [s.truth_landmark_error for s in scores if s.truth_landmark_error is not None]
    truth_r = [s.truth_mouth_correlation for s in scores
               if s.truth_mouth_correlation is not None]
    floor = [s.truth_input_landmark_error for s in scores
             if s.truth_input_landmark_error is not None]
    floor_r = [s.truth_input_mouth_correlation for s in scores
               if s.truth_input_mouth_correlation is not None]
    return {
        "landmark_error": float(np.mean(errors)) if errors else None,
        "landmark_missed": sum(s.landmark_missed for s in scores),
        "mouth_correlation": float(np.mean(correlations)) if correlations else None,
        "mouth_correlation_undefined": len(scores) - len(correlations),
        # each clip's openings about its own mean: how well the mouth follows within the
        # clips, not how the faces' resting mouths differ between them
        "mouth_correlation_pooled": pearson(
            np.concatenate([s.input_mouth - s.input_mouth.mean() for s in scores
                            if s.input_mouth.size] or [np.zeros(0)]),
            np.concatenate([s.output_mouth - s.output_mouth.mean() for s in scores
                            if s.output_mouth.size] or [np.zeros(0)])),
        "truth_landmark_error": float(np.mean(truth_errors)) if truth_errors else None,
        "truth_mouth_correlation": float(np.mean(truth_r)) if truth_r else None,
        "truth_input_landmark_error": float(np.mean(floor)) if floor else None,
        "truth_input_mouth_correlation": float(np.mean(floor_r)) if floor_r else None,
        "truth_mouth_correlation_pooled": pearson(
            np.concatenate([s.truth_mouth - s.truth_mouth.mean() for s in scores
                            if s.truth_mouth.size] or [np.zeros(0)]),
            np.concatenate([s.truth_output_mouth - s.truth_output_mouth.mean() for s in scores
                            if s.truth_output_mouth.size] or [np.zeros(0)])),
    }


def keypoints_on_face(face_points: Sequence[np.ndarray | None], keypoints: np.ndarray,
                      size: int = FACE_SIZE) -> float | None:
    """Share of keypoints (T x K x 2 in [-1, 1]) inside FaceMesh's face outline of the same
    frame (landmarks found at ``size`` x ``size``), over the frames where a face was found."""
    shares = []
    for points, kp in zip(face_points, keypoints, strict=True):
        if points is None:
            continue
        outline = points[list(FACE_OVAL), :2].astype(np.float32)
        px = (kp + 1) / 2 * (size - 1)
        shares.append(np.mean([cv2.pointPolygonTest(outline, (float(x), float(y)), False) >= 0
                               for x, y in px]))
    return float(np.mean(shares)) if shares else None


def use_face_metrics(requested: bool | None) -> bool:
    """Whether to score with FaceMesh: ``requested`` True, False or None (when installed, with a
    warning when not). Raises FaceMeshUnavailable when asked for but not installed."""
    if requested is False:
        return False
    if facemesh_available():
        return True
    if requested:
        raise FaceMeshUnavailable(f"--face-metrics: {INSTALL_HINT}")
    log.warning("%s; landmark_error and mouth_correlation are reported as null", INSTALL_HINT)
    return False


class FaceScorer:
    """One static-mode FaceMesh that scores (input video, output video) pairs of
    T x H x W x 3 uint8 frames."""

    def __init__(self, size: int = FACE_SIZE) -> None:
        self.size = size
        self._mesh = FaceMesh(static=True)

    def landmarks(self, video: np.ndarray) -> list[np.ndarray | None]:
        """Per frame the (468, 3) landmarks at size x size, or None where no face is found."""
        return [self._mesh.landmarks(to_face_size(frame, self.size)) for frame in video]

    def score(self, input_video: np.ndarray, output_video: np.ndarray,
              keypoints: np.ndarray | None = None, tracks: np.ndarray | None = None,
              tracked: Sequence[int] = ()) -> FaceScores:
        """Landmark error and mouth correlation of the output against the input, and with
        ``keypoints`` (T x K x 2, [-1, 1]) the share of them on the input's face; with the
        renderer's ``tracks`` of the ``tracked`` landmarks (T x K x 2 pixels of the input),
        the same against them (:func:`score_against_tracks`)."""
        reference = self.landmarks(input_video)
        output = self.landmarks(output_video)
        scores = score_landmarks(reference, output)
        if keypoints is not None:
            scores.keypoints_on_face = keypoints_on_face(reference, keypoints, self.size)
        if tracks is not None:
            scale = np.array([self.size / input_video.shape[2], self.size / input_video.shape[1]])
            score_against_tracks(scores, (tracks + 0.5) * scale - 0.5, tracked, reference,
                                 output)
        return scores

    def close(self) -> None:
        self._mesh.close()

    def __enter__(self) -> FaceScorer:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
