"""Real-face scores on a real photograph (matplotlib's Grace Hopper): gain over a frozen frame,
FaceMesh landmark error, mouth-opening correlation, missing faces."""

from __future__ import annotations

import logging
import os

import cv2
import matplotlib
import numpy as np
import pytest
import torch

from kpvid.models.facemesh import FaceMeshUnavailable, facemesh_available, inter_ocular
from kpvid.training import face_metrics, metrics
from kpvid.training.face_metrics import (
    FaceScorer,
    FaceScores,
    frame_psnr,
    mean_face_scores,
    pearson,
    psnr_gain_frozen,
    score_landmarks,
    use_face_metrics,
)

SIZE = 64
# the face in the 512 x 600 photograph spans x 171-357, y 131-333 (FaceMesh): a 300 px square
CENTRE_X, CENTRE_Y, HALF = 264, 232, 150
MOUTH_Y, MOUTH_X, MOUTH_WIDTH = 277, 268, 63
CROP_PX = 2 * HALF / SIZE  # photograph pixels per video pixel

needs_facemesh = pytest.mark.skipif(not facemesh_available(),
                                    reason="MediaPipe FaceMesh is not installed")


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    path = os.path.join(matplotlib.get_data_path(), "sample_data", "grace_hopper.jpg")
    return cv2.cvtColor(cv2.imread(path), cv2.COLOR_BGR2RGB)


@pytest.fixture(scope="module")
def scorer():
    if not facemesh_available():
        pytest.skip("MediaPipe FaceMesh is not installed")
    with FaceScorer() as faces:
        yield faces


def open_mouth(photo: np.ndarray, gap: int) -> np.ndarray:
    """The photograph with the jaw moved down ``gap`` px under the lips and a dark gap there."""
    if gap == 0:
        return photo
    moved = photo.copy()
    moved[MOUTH_Y + gap:] = photo[MOUTH_Y:len(photo) - gap]
    jaw = np.zeros(photo.shape[:2], np.float32)
    cv2.ellipse(jaw, (MOUTH_X, MOUTH_Y + 30), (70, 60), 0, 0, 360, 1, -1)
    jaw = cv2.GaussianBlur(jaw, (31, 31), 10)[..., None]
    out = (jaw * moved + (1 - jaw) * photo).astype(np.uint8)
    cv2.ellipse(out, (MOUTH_X, MOUTH_Y + gap // 2), (26, gap // 2), 0, 0, 360, (70, 25, 25), -1)
    return out


def video(photo: np.ndarray, gaps: list[int], shift: float = 0) -> np.ndarray:
    """SIZE x SIZE frames of the face, the mouth opened by ``gaps`` px, the face moved ``shift``
    video pixels to the right."""
    dx = round(shift * CROP_PX)
    frames = []
    for gap in gaps:
        crop = open_mouth(photo, gap)[CENTRE_Y - HALF:CENTRE_Y + HALF,
                                      CENTRE_X - HALF - dx:CENTRE_X + HALF - dx]
        frames.append(cv2.resize(crop, (SIZE, SIZE), interpolation=cv2.INTER_AREA))
    return np.stack(frames)


def test_gain_over_a_frozen_frame(photo):
    clip = video(photo, [0, 6, 12, 18])
    frozen = np.broadcast_to(clip[:1], clip.shape)
    assert psnr_gain_frozen(clip, frozen) == pytest.approx(0)
    shifted = video(photo, [0, 6, 12, 18], shift=2)
    assert psnr_gain_frozen(clip, shifted) < 0  # worse than not moving at all
    assert psnr_gain_frozen(clip, clip) > 50  # identical frames: PSNR 100 dB
    assert psnr_gain_frozen(clip[:1], clip[:1]) is None
    # float frames in [0, 1] score as metrics.psnr does
    as_float = clip.astype(np.float32) / 255
    noisy = np.clip(as_float + np.random.default_rng(0).normal(0, 0.05, clip.shape), 0, 1)
    tensors = [torch.from_numpy(x).permute(0, 3, 1, 2).float() for x in (noisy, as_float)]
    assert frame_psnr(noisy, as_float) == pytest.approx(metrics.psnr(*tensors).numpy(), abs=1e-3)


def test_pearson_and_means_over_clips():
    x = np.array([0.0, 0.1, 0.2, 0.1])
    assert pearson(x, 2 * x + 1) == pytest.approx(1)
    assert pearson(x, -x) == pytest.approx(-1)
    assert pearson(np.full(4, 0.1), x) is None  # the input's mouth does not move
    assert pearson(x[:2], x[:2]) is None  # too few frames
    assert pearson(x, np.full(4, 0.1)) == 0  # a frozen mouth follows nothing
    moving = FaceScores(0.1, 1, 1.0, x, x)
    still = FaceScores(0.3, 0, None, np.full(3, 0.05), np.array([0.05, 0.06, 0.04]))
    lost = FaceScores(None, 4, None)
    mean = mean_face_scores([moving, still, lost])
    assert mean["landmark_error"] == pytest.approx(0.2) and mean["landmark_missed"] == 5
    assert mean["mouth_correlation"] == 1 and mean["mouth_correlation_undefined"] == 2
    assert 0.9 < mean["mouth_correlation_pooled"] < 1
    assert set(mean_face_scores(None).values()) == {None}


def test_face_metrics_flag_without_facemesh(monkeypatch, caplog):
    monkeypatch.setattr(face_metrics, "facemesh_available", lambda: False)
    assert use_face_metrics(False) is False
    with caplog.at_level(logging.WARNING):
        assert use_face_metrics(None) is False
    assert "reported as null" in caplog.text
    with pytest.raises(FaceMeshUnavailable, match="--face-metrics: MediaPipe FaceMesh"):
        use_face_metrics(True)


@needs_facemesh
def test_landmark_error_grows_with_a_shift(photo, scorer):
    clip = video(photo, [0, 9, 18])
    points = scorer.landmarks(clip)
    assert all(p is not None for p in points)
    same = score_landmarks(points, scorer.landmarks(clip))  # static mode: the same landmarks
    assert same.landmark_error == pytest.approx(0, abs=1e-6) and same.landmark_missed == 0
    eyes = np.mean([inter_ocular(p) for p in points]) * SIZE / 256  # video pixels
    errors = [scorer.score(clip, video(photo, [0, 9, 18], shift=s)).landmark_error
              for s in (1, 2, 4)]
    assert errors[0] < errors[1] < errors[2]
    # every landmark moves by the shift: the error is the shift in inter-ocular distances
    assert errors == pytest.approx([s / eyes for s in (1, 2, 4)], rel=0.15)


@needs_facemesh
def test_mouth_correlation(photo, scorer):
    gaps = [0, 6, 12, 18, 9, 3]
    talking = video(photo, gaps)
    scores = scorer.score(talking, talking)
    assert scores.mouth_correlation == pytest.approx(1)
    assert np.corrcoef(scores.input_mouth, gaps)[0, 1] > 0.9  # the openings do follow the gap
    frozen = np.broadcast_to(talking[:1], talking.shape)
    assert scorer.score(talking, frozen).mouth_correlation == 0
    # the face moves, the mouth does not: FaceMesh's jitter is no mouth movement
    still = np.concatenate([video(photo, [0], shift=s) for s in (0, 1, 2, 3)])
    assert scorer.score(still, still).mouth_correlation is None  # undefined, not a crash
    mean = mean_face_scores([scores, scorer.score(still, still)])
    assert mean["mouth_correlation"] == pytest.approx(1)
    assert mean["mouth_correlation_undefined"] == 1
    assert mean["mouth_correlation_pooled"] == pytest.approx(1)


@needs_facemesh
def test_missing_faces_are_counted(photo, scorer):
    clip = video(photo, [0, 9, 18])
    grey = np.full_like(clip, 128)
    partly = clip.copy()
    partly[1] = grey[1]
    scores = scorer.score(clip, partly)
    assert scores.landmark_missed == 1
    assert scores.landmark_error == pytest.approx(0, abs=1e-6)
    assert scores.mouth_correlation is None  # two frames left: too few
    lost = scorer.score(clip, grey)
    assert (lost.landmark_error, lost.landmark_missed, lost.mouth_correlation) == (None, 3, None)


def test_keypoint_placement_spread_and_motion() -> None:
    from kpvid.training.evaluate import keypoint_placement

    still = np.zeros((4, 2, 2))
    still[:, 1, 0] = 4 / 63  # the second keypoint 2 px right of the first at 64 px
    assert keypoint_placement(still, 64) == pytest.approx({"kp_spread": 2.0, "kp_motion": 0.0})
    moving = still.copy()
    moving[:, 0, 1] = np.array([-1, 1, -1, 1]) * 3 / 31.5  # +-3 px up and down
    assert keypoint_placement(moving, 64)["kp_motion"] == pytest.approx(1.5)  # one of two


def test_keypoints_on_face_counts_those_inside_the_outline() -> None:
    from kpvid.models.facemesh import FACE_OVAL
    from kpvid.training.face_metrics import keypoints_on_face

    points = np.zeros((468, 3), np.float32)
    angles = np.linspace(0, 2 * np.pi, len(FACE_OVAL), endpoint=False)
    points[list(FACE_OVAL), 0] = 127.5 + 60 * np.cos(angles)
    points[list(FACE_OVAL), 1] = 127.5 + 60 * np.sin(angles)
    keypoints = np.array([[[0.0, 0.0], [0.2, -0.2], [0.9, 0.9], [-0.95, 0.0]]])  # 2 in, 2 out
    assert keypoints_on_face([points], keypoints) == pytest.approx(0.5)
    assert keypoints_on_face([None], keypoints) is None


def test_scores_against_the_renderers_tracks() -> None:
    """FaceMesh judges only the output: an output whose landmarks sit on the tracks scores 0
    and follows the mouth; one with a frozen mouth follows nothing; the input's finds give the
    floor."""
    from kpvid.synthetic.photo_heads import TRACKED_LANDMARKS
    from kpvid.training.face_metrics import FaceScores, score_against_tracks

    rng = np.random.default_rng(0)
    base = np.array([[20, 24], [40, 24], [30, 32], [24, 40], [36, 40], [30, 40], [30, 41],
                     [30, 52], [16, 30], [44, 30]], float)
    tracks = np.repeat(base[None], 8, axis=0)
    tracks[:, 6, 1] += rng.uniform(0, 4, 8)  # the lower lip opens and closes

    def as_mesh(points: np.ndarray) -> np.ndarray:
        mesh = np.zeros((468, 3))
        mesh[list(TRACKED_LANDMARKS), :2] = points
        return mesh

    exact = [as_mesh(t) for t in tracks]
    frozen = [as_mesh(base) for _ in tracks]
    scores = FaceScores(landmark_error=None, landmark_missed=0, mouth_correlation=None)
    score_against_tracks(scores, tracks, TRACKED_LANDMARKS, frozen, exact)
    assert scores.truth_landmark_error == pytest.approx(0, abs=1e-9)
    assert scores.truth_mouth_correlation == pytest.approx(1)
    assert scores.truth_input_mouth_correlation == 0.0  # the input's finds: a frozen mouth
    assert scores.truth_input_landmark_error > 0
    missed = [None] * 8
    score_against_tracks(scores := FaceScores(None, 8, None), tracks, TRACKED_LANDMARKS,
                         missed, missed)
    assert scores.truth_landmark_error is None and scores.truth_mouth_correlation is None
