"""Frame sources: camera (OpenCV), video file (PyAV) and the project's synthetic generator.

Every source yields square RGB uint8 frames at the model's frame size: each frame of a camera or
a file is cropped and resized. The crop is the largest centred square (``"center"``, the
classes' default), a fixed rectangle (``--crop x,y,w,h`` in source pixels), or ``"auto"``, a
steady square that follows the face (:mod:`kpvid.sender.face_crop`; ``kpvid-send``'s default).
Frames the schedule does not observe are passed over with :meth:`FrameSource.skip`, which avoids
as much of the work of :meth:`FrameSource.read` as the source allows (the face crop only counts
them).
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import av
import cv2
import numpy as np

if TYPE_CHECKING:
    from .face_crop import FaceCrop

log = logging.getLogger(__name__)

DEFAULT_CAMERA_FPS = 30.0
DEFAULT_FILE_FPS = 25.0
CAMERA_READ_RETRIES = 10
AUTO_CROP = "auto"
CENTER_CROP = "center"
CROP_MODES = (AUTO_CROP, CENTER_CROP)


class SourceError(Exception):
    """A source that cannot be opened or read (the message says which and why)."""


@dataclass(frozen=True)
class Crop:
    """Rectangle in source pixels: left ``x``, top ``y``, width ``w``, height ``h``."""

    x: int
    y: int
    w: int
    h: int

    def __str__(self) -> str:
        return f"{self.x},{self.y},{self.w},{self.h}"


def parse_crop(text: str) -> Crop:
    """``"x,y,w,h"`` (integers; x, y >= 0; w, h > 0) -> :class:`Crop`; ValueError if not."""
    parts = [p.strip() for p in text.split(",")]
    if len(parts) != 4:
        raise ValueError(f"crop must be four integers x,y,w,h, got {text!r}")
    try:
        x, y, w, h = (int(p) for p in parts)
    except ValueError:
        raise ValueError(f"crop must be four integers x,y,w,h, got {text!r}") from None
    if x < 0 or y < 0:
        raise ValueError(f"crop x and y must be >= 0, got {text!r}")
    if w <= 0 or h <= 0:
        raise ValueError(f"crop width and height must be > 0, got {text!r}")
    return Crop(x, y, w, h)


CropSpec = Crop | str | None
"""What to crop: a :class:`Crop`, ``"auto"`` (follow the face), ``"center"`` or None (the
largest centred square)."""


def parse_crop_spec(text: str) -> Crop | str:
    """``"auto"``, ``"center"`` (or ``"centre"``) or ``"x,y,w,h"`` -> the mode or a
    :class:`Crop`; ValueError if none of those."""
    mode = text.strip().lower()
    if mode == "centre":
        mode = CENTER_CROP
    if mode in CROP_MODES:
        return mode
    if "," not in text:
        raise ValueError(f"crop must be auto, center or four integers x,y,w,h, got {text!r}")
    return parse_crop(text)


def centre_crop(width: int, height: int) -> Crop:
    """The largest centred square of a ``width`` x ``height`` frame."""
    side = min(width, height)
    return Crop((width - side) // 2, (height - side) // 2, side, side)


def resolve_crop(crop: Crop | None, width: int, height: int) -> Crop:
    """``crop`` checked against the frame size, or the centred square when ``crop`` is None."""
    if crop is None:
        return centre_crop(width, height)
    if crop.x + crop.w > width or crop.y + crop.h > height:
        raise SourceError(f"crop {crop} (x,y,w,h) reaches outside the {width}x{height} frame")
    if crop.w != crop.h:
        log.warning("crop %s is not square: frames will be stretched to a square", crop)
    return crop


def crop_and_resize(frame: np.ndarray, crop: Crop, size: int) -> np.ndarray:
    """Cut ``crop`` out of an H x W x 3 frame and resize it to ``size`` x ``size``."""
    patch = frame[crop.y:crop.y + crop.h, crop.x:crop.x + crop.w]
    if patch.shape[:2] != (size, size):
        shrinking = crop.w > size or crop.h > size
        patch = cv2.resize(patch, (size, size),
                           interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR)
    return np.ascontiguousarray(patch, dtype=np.uint8)


class FrameSource(ABC):
    """A stream of square RGB uint8 frames (``size`` x ``size`` x 3) at ``fps``.

    ``paced`` is True when :meth:`read` and :meth:`skip` block until the next frame exists (a
    camera); otherwise frames are available at once and the caller paces them at ``fps``.
    """

    fps: float
    size: int
    paced: bool = False
    crop: Crop
    """Camera and file: the crop of the latest frame (under ``"auto"`` it follows the face)."""
    face_crop: FaceCrop | None = None
    """The face-following crop under ``"auto"``, with its counts; None otherwise."""

    @abstractmethod
    def read(self) -> np.ndarray | None:
        """Next frame, decoded, cropped and resized; None at the end of a finite source."""

    @abstractmethod
    def skip(self) -> bool:
        """Pass over the next frame without preparing it; False at the end of the source."""

    @abstractmethod
    def close(self) -> None:
        """Release the device or file (idempotent)."""

    def _set_up_crop(self, spec: CropSpec, width: int, height: int) -> None:
        """``self.crop`` (and ``self.face_crop`` for ``"auto"``) for ``width`` x ``height``
        frames at ``self.fps``; SourceError when the crop does not fit or cannot be set up."""
        if spec == AUTO_CROP:
            from .face_crop import FaceCrop, FaceCropError, detect_every_frames

            try:
                self.face_crop = FaceCrop(width, height,
                                          detect_every=detect_every_frames(self.fps))
            except FaceCropError as exc:
                raise SourceError(f"--crop auto: {exc} (--crop center needs no detector)") \
                    from None
            self.crop = self.face_crop.crop
        elif spec is None or isinstance(spec, Crop) or spec == CENTER_CROP:
            self.crop = resolve_crop(None if spec == CENTER_CROP else spec, width, height)
        else:
            raise ValueError(f"crop must be a Crop, {AUTO_CROP!r}, {CENTER_CROP!r} or None, "
                             f"got {spec!r}")

    def _crop_and_resize(self, rgb: np.ndarray) -> np.ndarray:
        """A decoded frame, cropped (where the face crop says, under ``"auto"``) and resized."""
        if self.face_crop is not None:
            self.crop = self.face_crop.update(rgb)
        return crop_and_resize(rgb, self.crop, self.size)

    def _passed_over(self) -> None:
        """A frame skipped undecoded (the face crop counts it towards its next check)."""
        if self.face_crop is not None:
            self.face_crop.skip()

    def __enter__(self) -> FrameSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class CameraSource(FrameSource):
    """An OpenCV camera. :meth:`skip` only grabs the frame (no decode, no colour conversion)."""

    paced = True

    def __init__(self, index: int, size: int, crop: CropSpec = None,
                 fps: float | None = None):
        self.index = index
        self.size = size
        self._capture = cv2.VideoCapture(index)
        if not self._capture.isOpened():
            self._capture.release()
            raise SourceError(f"could not open camera {index}")
        if fps is not None:
            self._capture.set(cv2.CAP_PROP_FPS, fps)
        ok, first = self._capture.read()
        if not ok or first is None:
            self._capture.release()
            raise SourceError(f"camera {index} opened but delivered no frame")
        height, width = first.shape[:2]
        reported = self._capture.get(cv2.CAP_PROP_FPS)
        self.fps = float(reported) if reported and reported > 0 else (fps or DEFAULT_CAMERA_FPS)
        try:
            self._set_up_crop(crop, width, height)
        except (SourceError, ValueError):
            self._capture.release()
            raise
        self._first: np.ndarray | None = first
        log.info("camera %d: %dx%d at %.1f fps, crop %s", index, width, height, self.fps,
                 AUTO_CROP if self.face_crop is not None else self.crop)

    def read(self) -> np.ndarray:
        bgr, self._first = self._first, None
        for _ in range(CAMERA_READ_RETRIES):
            if bgr is not None:
                return self._crop_and_resize(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
            ok, bgr = self._capture.read()
            bgr = bgr if ok else None
        raise SourceError(f"camera {self.index} stopped delivering frames")

    def skip(self) -> bool:
        if self._first is not None:
            self._first = None
            self._passed_over()
            return True
        for _ in range(CAMERA_READ_RETRIES):
            if self._capture.grab():
                self._passed_over()
                return True
        raise SourceError(f"camera {self.index} stopped delivering frames")

    def close(self) -> None:
        self._capture.release()


class VideoFileSource(FrameSource):
    """A video file decoded with PyAV, at the stream's own frame rate, optionally looped.

    :meth:`skip` of an inter-coded stream (H.264, VP9, ...) still demuxes and decodes the frame
    (later frames depend on it) but leaves out the conversion to RGB, the crop and the resize;
    an intra-only stream (MJPEG, ProRes, ...) is not decoded at all: its packet is dropped.
    """

    def __init__(self, path: str | Path, size: int, crop: CropSpec = None,
                 loop: bool = False):
        self.path = Path(path)
        self.size = size
        self.loop = loop
        if not self.path.is_file():
            raise SourceError(f"video file not found: {self.path}")
        try:
            self._container = av.open(str(self.path))
        except av.FFmpegError as exc:
            raise SourceError(f"could not open {self.path} as a video: {exc}") from None
        try:
            self._setup(crop)
        except BaseException:
            self._container.close()
            raise

    def _setup(self, crop: CropSpec) -> None:
        if not self._container.streams.video:
            raise SourceError(f"{self.path} has no video stream")
        self._stream = self._container.streams.video[0]
        self._intra_only = bool(self._stream.codec_context.codec.intra_only)
        if not self._intra_only:
            self._stream.thread_type = "AUTO"
        rate = self._stream.average_rate or self._stream.guessed_rate
        self.fps = float(rate) if rate else DEFAULT_FILE_FPS
        self._pending: deque[av.VideoFrame] = deque()
        self._packets: Iterator[av.Packet] = self._container.demux(self._stream)
        self._frames_this_pass = 0
        first = self._next_frame()
        if first is None:
            raise SourceError(f"{self.path}: no decodable video frame")
        self._pending.appendleft(first)
        self._frames_this_pass = 0
        self._set_up_crop(crop, first.width, first.height)
        log.info("%s: %dx%d at %.3f fps (%s), crop %s%s", self.path.name, first.width,
                 first.height, self.fps, self._stream.codec_context.name,
                 AUTO_CROP if self.face_crop is not None else self.crop,
                 ", looping" if self.loop else "")

    def _next_packet(self) -> av.Packet | None:
        """Next packet of the stream; at the end, restarts the file when looping."""
        packet = next(self._packets, None)
        if packet is None and self.loop:
            if self._frames_this_pass == 0:
                raise SourceError(f"{self.path}: a pass over the file yielded no frame")
            self._container.seek(0)
            self._packets = self._container.demux(self._stream)
            self._frames_this_pass = 0
            packet = next(self._packets, None)
        return packet

    def _decode(self, packet: av.Packet) -> list[av.VideoFrame]:
        try:
            return list(packet.decode())
        except av.InvalidDataError as exc:
            log.warning("%s: undecodable packet skipped (%s)", self.path.name, exc)
            return []

    def _next_frame(self) -> av.VideoFrame | None:
        while not self._pending:
            packet = self._next_packet()
            if packet is None:
                return None
            self._pending.extend(self._decode(packet))
        self._frames_this_pass += 1
        return self._pending.popleft()

    def read(self) -> np.ndarray | None:
        frame = self._next_frame()
        if frame is None:
            return None
        return self._crop_and_resize(frame.to_ndarray(format="rgb24"))

    def skip(self) -> bool:
        if self._intra_only and not self._pending:
            while True:
                packet = self._next_packet()
                if packet is None:
                    return False
                if packet.size:  # a real packet: one frame, dropped undecoded
                    self._frames_this_pass += 1
                    self._passed_over()
                    return True
                self._decode(packet)  # the empty end-of-stream packet flushes the decoder
        if self._next_frame() is None:
            return False
        self._passed_over()
        return True

    def close(self) -> None:
        self._container.close()


def pingpong_index(index: int, length: int) -> int:
    """Frame of a ``length``-frame clip shown at step ``index`` when it plays 0..L-1, L-2..1, ..."""
    if length < 2:
        raise ValueError(f"ping-pong needs at least 2 frames, got {length}")
    if index < 0:
        raise ValueError(f"index must be >= 0, got {index}")
    cycle = 2 * (length - 1)
    step = index % cycle
    return step if step < length else cycle - step


SYNTHETIC_LENGTH = 600  # frames of a synthetic clip by default, played ping-pong


class SyntheticSource(FrameSource):
    """An endless synthetic clip: ``length`` frames of ``kpvid.synthetic`` played
    ping-pong. Deterministic for (domain, seed, size, length): :meth:`frame_at` gives the frame
    shown at any step, so a demo can compare what the receiver rebuilt with what was sent.
    """

    def __init__(self, domain: str = "faces", seed: int = 0, size: int = 64, fps: float = 30.0,
                 length: int = SYNTHETIC_LENGTH, face: str | None = None):
        from kpvid.synthetic import generate_video

        if fps <= 0:
            raise ValueError(f"fps must be > 0, got {fps}")
        self.domain = domain
        self.seed = seed
        self.size = size
        self.fps = float(fps)
        self.length = length
        self._frames = generate_video(domain, seed=seed, size=size, frames=length, face=face)
        self._frames.setflags(write=False)
        self.position = 0
        """Step of the next frame :meth:`read` or :meth:`skip` will return."""
        log.info("synthetic %s%s (seed %d): %d frames at %dx%d, %.1f fps, ping-pong", domain,
                 f" {face}" if face else "", seed,
                 length, size, size, self.fps)

    def frame_at(self, index: int) -> np.ndarray:
        """The frame shown at step ``index`` (read-only view)."""
        return self._frames[pingpong_index(index, self.length)]

    def read(self) -> np.ndarray:
        frame = self.frame_at(self.position).copy()
        self.position += 1
        return frame

    def skip(self) -> bool:
        self.position += 1
        return True

    def close(self) -> None:
        """Nothing to release: the clip lives in memory."""
