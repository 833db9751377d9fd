"""Sender's face-following crop (``--crop auto``): a real face photograph (Grace Hopper, shipped
with matplotlib) pasted into bigger frames, OpenCV's Haar cascade finding it, and the crop's
steadiness, fallbacks, counts, the sources that use it and the command line."""

from __future__ import annotations

import logging
import os
import re
from functools import cache
from pathlib import Path

import av
import cv2
import matplotlib
import numpy as np
import pytest

from kpvid.sender import cli, sources
from kpvid.sender.face_crop import (
    SIDE_FACTOR,
    FaceCrop,
    HaarFaceDetector,
    detect_every_frames,
    face_crop_box,
    needs_move,
)
from kpvid.sender.sources import (
    CameraSource,
    Crop,
    VideoFileSource,
    centre_crop,
    parse_crop_spec,
)
from kpvid.sender.stats import SenderStats

W, H = 1280, 720
PHOTO = os.path.join(matplotlib.get_data_path(), "sample_data", "grace_hopper.jpg")


@cache
def _photo() -> np.ndarray:
    """Grace Hopper, 512x600 RGB; her face is about 220 px."""
    return cv2.cvtColor(cv2.imread(PHOTO), cv2.COLOR_BGR2RGB)


@cache
def _photo_face() -> tuple[int, int, int, int]:
    """The face box the detector finds in the photo on its own, in photo pixels."""
    faces = HaarFaceDetector()(_photo())
    assert len(faces) == 1
    return faces[0]


@cache
def _background(width: int = W, height: int = H) -> np.ndarray:
    noise = np.random.default_rng(7).integers(0, 256, (height, width, 3), dtype=np.uint8)
    return cv2.GaussianBlur(noise, (0, 0), 4)


def _frame(x: int | None, y: int = 0, scale: float = 1.0, width: int = W,
           height: int = H) -> np.ndarray:
    """A blurred-noise frame with the photo (scaled) pasted at (x, y); x None: no photo."""
    frame = _background(width, height).copy()
    if x is not None:
        photo = _photo() if scale == 1.0 else cv2.resize(_photo(), None, fx=scale, fy=scale,
                                                         interpolation=cv2.INTER_AREA)
        patch = photo[:height - y, :width - x]
        frame[y:y + patch.shape[0], x:x + patch.shape[1]] = patch
    return frame


def _face_at(x: int, y: int, scale: float = 1.0) -> tuple[float, float, float]:
    """(centre x, centre y, side) of the face of a photo pasted at (x, y)."""
    fx, fy, fw, fh = (v * scale for v in _photo_face())
    return x + fx + fw / 2, y + fy + fh / 2, max(fw, fh)


def _centre(crop: Crop) -> tuple[float, float]:
    return crop.x + crop.w / 2, crop.y + crop.h / 2


def _frames_face(crop: Crop, x: int, y: int, scale: float = 1.0) -> None:
    """``crop`` is a square of about SIDE_FACTOR faces holding the face near its centre."""
    cx, cy, side = _face_at(x, y, scale)
    assert crop.w == crop.h
    assert 0.8 * SIDE_FACTOR * side < crop.w < 1.2 * SIDE_FACTOR * side
    assert crop.x <= cx - side / 2 and cx + side / 2 <= crop.x + crop.w
    assert crop.y <= cy - side / 2 and cy + side / 2 <= crop.y + crop.h
    ox, oy = _centre(crop)
    assert abs(cx - ox) < 0.1 * crop.w and abs(cy - oy) < 0.2 * crop.w


# geometry

def test_face_crop_box_frames_clamps_and_shrinks() -> None:
    # 2.2 x 200 = 440, centred on (200, 200 + 0.2 x 200), clamped in
    assert face_crop_box((100, 100, 200, 200), W, H) == Crop(0, 20, 440, 440)
    assert face_crop_box((0, 0, 100, 100), W, H) == Crop(0, 0, 220, 220)
    assert face_crop_box((1200, 650, 100, 100), W, H) == Crop(1060, 500, 220, 220)
    assert face_crop_box((500, 100, 600, 600), W, H) == Crop(440, 0, 720, 720)  # largest fit
    assert face_crop_box((100, 100, 200, 200), W, H, side_factor=1.0, down_shift=0.0) \
        == Crop(100, 100, 200, 200)


def test_needs_move_thresholds() -> None:
    crop = Crop(100, 100, 400, 400)
    assert not needs_move(crop, crop)
    assert not needs_move(crop, Crop(155, 60, 400, 400))  # within 0.15 x 400 = 60 px
    assert needs_move(crop, Crop(161, 100, 400, 400))
    assert needs_move(crop, Crop(100, 39, 400, 400))
    assert not needs_move(crop, Crop(100, 100, 510, 510))  # +27.5 %
    assert needs_move(crop, Crop(100, 100, 530, 530))  # +32.5 %
    assert needs_move(crop, Crop(100, 100, 300, 300))  # 400 / 300 > 1.3


def test_detect_every_frames() -> None:
    assert detect_every_frames(30.0) == 15
    assert detect_every_frames(25.0, 0.5) == 12
    assert detect_every_frames(1.0) == 1


# the crop on real frames

def test_crop_frames_the_face() -> None:
    crop = FaceCrop(W, H)
    assert crop.crop == centre_crop(W, H)
    box = crop.update(_frame(600, 100))
    _frames_face(box, 600, 100)
    assert crop.framed and crop.face is not None
    assert (crop.checks, crop.misses, crop.moves) == (1, 0, 1)


def test_crop_holds_still_when_the_face_moves_a_little() -> None:
    crop = FaceCrop(W, H)
    first = crop.update(_frame(600, 100))
    for dx, dy in [(6, 4), (-5, 3), (10, -8), (-12, 6), (3, 12), (0, 0)]:
        assert crop.update(_frame(600 + dx, 100 + dy)) == first
    assert (crop.checks, crop.misses, crop.moves) == (7, 0, 1)


def test_crop_follows_a_face_that_moves_far() -> None:
    crop = FaceCrop(W, H)
    first = crop.update(_frame(700, 60))
    assert crop.update(_frame(100, 50)) == first  # one check is not enough (CONFIRM_CHECKS)
    moved = crop.update(_frame(104, 52))
    assert moved != first
    _frames_face(moved, 104, 52)
    assert crop.moves == 2
    assert crop.update(_frame(100, 50)) == moved  # and does not flip back


def test_crop_follows_a_face_that_grows() -> None:
    crop = FaceCrop(W, H, confirm=1)
    small = crop.update(_frame(500, 100, scale=0.7))  # a face of ~150 px, about the smallest
    _frames_face(small, 500, 100, scale=0.7)         # found (320 / 1280 of it is ~40 px)
    big = crop.update(_frame(400, 0, scale=1.2))  # ~260 px
    _frames_face(big, 400, 0, scale=1.2)
    assert big.w > 1.3 * small.w and crop.moves == 2


def test_no_face_sends_the_centre_crop_and_keeps_looking(caplog: pytest.LogCaptureFixture
                                                         ) -> None:
    crop = FaceCrop(W, H)
    with caplog.at_level(logging.WARNING, logger="kpvid.sender.face_crop"):
        assert crop.update(_frame(None)) == Crop(280, 0, 720, 720)
        assert crop.update(_frame(None)) == Crop(280, 0, 720, 720)
    assert (crop.checks, crop.misses, crop.moves, crop.framed) == (2, 2, 0, False)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "no face found" in warnings[0].getMessage()
    _frames_face(crop.update(_frame(300, 80)), 300, 80)  # found: taken at once
    assert (crop.checks, crop.misses, crop.moves, crop.framed) == (3, 2, 1, True)


def test_face_lost_keeps_the_last_crop_and_counts() -> None:
    crop = FaceCrop(W, H)
    framed = crop.update(_frame(600, 100))
    for _ in range(3):
        assert crop.update(_frame(None)) == framed
    crop.skip()  # an undecoded frame while the face is lost counts too
    assert crop.face is None and (crop.checks, crop.misses, crop.moves) == (4, 3, 1)
    assert crop.frames_without_face == 4
    assert crop.update(_frame(604, 98)) == framed  # back where it was: no move
    assert crop.frames_without_face == 4
    stats = SenderStats(face_crop=crop)
    stats.record_frame(observed=True)
    assert "no face 3/5" in stats.status_line()
    assert "face crop: 1 move, no face in 3 of 5 checks (4 frames)" in stats.summary()


# the crop's logic, with a stand-in detector

class _Faces:
    """A detector that returns what it is told and counts its calls."""

    def __init__(self, *boxes: tuple[int, int, int, int]):
        self.boxes = list(boxes)
        self.calls = 0

    def __call__(self, frame: np.ndarray) -> list[tuple[int, int, int, int]]:
        self.calls += 1
        return list(self.boxes)


def test_checks_only_every_few_frames_and_skips_are_counted() -> None:
    faces = _Faces((500, 200, 200, 200))
    crop = FaceCrop(W, H, detect_every=3, detector=faces)
    frame = np.zeros((H, W, 3), np.uint8)
    crop.update(frame)  # the first decoded frame is checked
    crop.skip()
    crop.skip()
    crop.update(frame)  # 3 frames on: checked
    crop.update(frame)
    crop.update(frame)
    crop.skip()
    crop.update(frame)  # 3 frames after the last check
    assert faces.calls == crop.checks == 3


def test_stays_on_the_framed_face_when_another_is_bigger() -> None:
    faces = _Faces((500, 200, 200, 200))
    crop = FaceCrop(W, H, detector=faces)
    framed = crop.update(np.zeros((H, W, 3), np.uint8))
    faces.boxes = [(50, 50, 240, 240), (505, 203, 198, 198)]  # the bigger one listed first
    for _ in range(4):
        assert crop.update(np.zeros((H, W, 3), np.uint8)) == framed
    faces.boxes = [(50, 50, 240, 240)]  # now only the other: it takes two checks to move
    assert crop.update(np.zeros((H, W, 3), np.uint8)) == framed
    assert crop.update(np.zeros((H, W, 3), np.uint8)) == face_crop_box(faces.boxes[0], W, H)


def test_a_single_stray_detection_does_not_move_it() -> None:
    faces = _Faces((500, 200, 200, 200))
    crop = FaceCrop(W, H, detector=faces)
    frame = np.zeros((H, W, 3), np.uint8)
    framed = crop.update(frame)
    for stray in [(40, 40, 100, 100), (1000, 400, 150, 150), (40, 40, 100, 100)]:
        faces.boxes = [stray]  # each somewhere else: none confirmed
        assert crop.update(frame) == framed
    assert crop.moves == 1


def test_detector_failure_is_a_miss_not_a_crash() -> None:
    def broken(frame: np.ndarray) -> list[tuple[int, int, int, int]]:
        raise cv2.error("boom")

    crop = FaceCrop(W, H, detector=broken)
    assert crop.update(np.zeros((H, W, 3), np.uint8)) == centre_crop(W, H)
    assert (crop.checks, crop.misses) == (1, 1)


def test_frame_size_change_starts_again() -> None:
    crop = FaceCrop(W, H, detector=_Faces((500, 200, 200, 200)))
    crop.update(np.zeros((H, W, 3), np.uint8))
    # the same face box in a 640x480 frame: checked at once, its crop clamped into the frame
    assert crop.update(np.zeros((480, 640), np.uint8)) == Crop(200, 40, 440, 440)
    assert (crop.width, crop.height, crop.checks) == (640, 480, 2)


def test_bad_parameters() -> None:
    with pytest.raises(ValueError, match="detect_every"):
        FaceCrop(W, H, detect_every=0, detector=_Faces())
    with pytest.raises(ValueError, match="frame size"):
        FaceCrop(0, H, detector=_Faces())


# the sources under --crop auto

def _write_clip(path: Path, frames: list[np.ndarray]) -> None:
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mjpeg", rate=25)
        stream.height, stream.width = frames[0].shape[:2]
        stream.pix_fmt = "yuvj420p"
        for image in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        container.mux(stream.encode())


def test_video_file_auto_crop(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "face.avi"
    _write_clip(path, [_frame(300, 20, scale=0.5, width=640, height=360)] * 6)
    with VideoFileSource(path, 32, crop="auto") as source:
        face_crop = source.face_crop
        assert face_crop is not None and face_crop.detect_every == 12  # 0.5 s at 25 fps
        assert source.crop == centre_crop(640, 360)
        calls = []
        real = face_crop.detector
        face_crop.detector = lambda frame: calls.append(1) or real(frame)
        first = source.read()
        assert first.shape == (32, 32, 3) and len(calls) == 1
        _frames_face(source.crop, 300, 20, scale=0.5)
        for _ in range(4):
            assert source.skip()  # dropped undecoded: the detector is not run
        assert source.read() is not None
        assert len(calls) == 1 and face_crop._age == 6
    with VideoFileSource(path, 32, crop="center") as source:
        assert source.face_crop is None and source.crop == centre_crop(640, 360)
    with VideoFileSource(path, 32) as source:
        assert source.face_crop is None


class _FaceCamera:
    """A stand-in cv2.VideoCapture delivering BGR frames with the face, at 10 fps."""

    def __init__(self, index: int):
        self.frame = cv2.cvtColor(_frame(600, 100), cv2.COLOR_RGB2BGR)
        self.reads = self.grabs = 0

    def isOpened(self) -> bool:
        return True

    def set(self, prop: int, value: float) -> bool:
        return True

    def get(self, prop: int) -> float:
        return 10.0 if prop == cv2.CAP_PROP_FPS else 0.0

    def read(self) -> tuple[bool, np.ndarray]:
        self.reads += 1
        return True, self.frame

    def grab(self) -> bool:
        self.grabs += 1
        return True

    def release(self) -> None:
        pass


def test_camera_auto_crop_skips_only_grab(monkeypatch: pytest.MonkeyPatch) -> None:
    cameras: list[_FaceCamera] = []
    monkeypatch.setattr(sources.cv2, "VideoCapture",
                        lambda index: cameras.append(_FaceCamera(index)) or cameras[-1])
    with CameraSource(0, 64, crop="auto") as source:
        face_crop = source.face_crop
        assert face_crop is not None and face_crop.detect_every == 5
        assert source.read().shape == (64, 64, 3)
        _frames_face(source.crop, 600, 100)
        for _ in range(6):
            assert source.skip()
        assert source.read() is not None  # 7 frames on: checked again
        assert (cameras[0].reads, cameras[0].grabs) == (2, 6)
        assert (face_crop.checks, face_crop.moves) == (2, 1)


# command line

@pytest.mark.parametrize("text, expected", [
    ("auto", "auto"), ("center", "center"), (" Centre ", "center"),
    ("10,20,300,300", Crop(10, 20, 300, 300)),
])
def test_parse_crop_spec(text: str, expected: Crop | str) -> None:
    assert parse_crop_spec(text) == expected
    assert cli.build_parser().parse_args(["--video", "x.mp4", "--to", "e", "--crop", text]
                                         ).crop == expected


def test_cli_crop_defaults_to_auto_for_cameras_and_files() -> None:
    parser = cli.build_parser()
    for argv in (["--camera", "0"], ["--video", "x.mp4"]):
        args = parser.parse_args([*argv, "--to", "e"])
        assert args.crop is None and cli._crop_spec(args) == "auto"


@pytest.mark.parametrize("argv, message", [
    (["--video", "x.mp4", "--crop", "middle"],
     "argument --crop: crop must be auto, center or four integers x,y,w,h, got 'middle'"),
    (["--video", "x.mp4", "--crop", "1,2,3"], "argument --crop: crop must be four integers"),
    (["--camera", "0", "--crop", "0,0,0,8"], "argument --crop: crop width and height"),
    (["--synthetic", "faces", "--crop", "auto"], "--crop does not apply to --synthetic"),
])
def test_cli_rejects_bad_crops(argv: list[str], message: str, capsys: pytest.CaptureFixture,
                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(cli.TOKEN_ENV, "t")
    with pytest.raises(SystemExit) as exc:
        cli.main([*argv, "--to", "e"])
    assert exc.value.code == 2
    assert re.search(re.escape(message), capsys.readouterr().err)


def test_cli_help_explains_the_crop_values(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--crop auto|center|X,Y,W,H" in text
    for phrase in ("auto (default) follows the face", "center is the largest centred square",
                   "X,Y,W,H a fixed rectangle", "Haar face detector"):
        assert phrase in text
