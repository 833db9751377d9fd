"""Keypoint prediction and frame synthesis for all streams on one worker thread, batched.

The event loop never runs a model: :meth:`SynthesisEngine.set_source`,
:meth:`SynthesisEngine.play` and :meth:`SynthesisEngine.render` queue a job and await an asyncio
future that the worker resolves with ``loop.call_soon_threadsafe``. The worker takes one job; for
a frame job it also drains the frame jobs already queued behind it (up to ``max_batch``,
stopping at the first job of another kind, or a second one of a stream, so that jobs keep their
order), steps the predictors of those streams together (:func:`step_predictors`: one batched
network call for a learned predictor) and renders them in one
:meth:`~kpvid.models.Synthesizer.render_many` call, whatever streams they belong to. Everything
that depends on a stream's source alone (keypoints, encoder features, the dense motion's source
inputs) is computed once, by ``set_source``; its predictor is made on its first ``play``.
Reconstruction mode: the driving keypoints are used as absolute keypoints.

A set that comes after its frame was played from a prediction is not lost: :meth:`correct`
puts the stream's predictor back to where it was after its last observed set (a
:meth:`~kpvid.models.predictors.Predictor.snapshot` taken then) and replays the frames since,
with the late set in its place, so the frames still to come are predicted from it. The worker
also times itself: :attr:`SynthesisEngine.render_every` is its
:class:`~kpvid.receiver.overload.RenderRate`, how many frames the streams may render while it
is overloaded.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from kpvid.models import (
    Detector,
    OcclusionAwareGenerator,
    PreparedSource,
    Synthesizer,
    kp_dict_from_kp6,
)
from kpvid.models.predictors import (
    ConstantVelocity,
    Predictor,
    forecast_predictors,
    step_predictors,
)
from kpvid.protocol.keypoint_set import check_kp6, to_kp6

from .overload import OverloadOptions, RenderRate

log = logging.getLogger(__name__)


class UnknownStreamError(KeyError):
    """A render for a stream with no source image (never set, or dropped)."""

    def __str__(self) -> str:  # KeyError would show the repr of the message
        return str(self.args[0]) if self.args else ""


class EngineClosedError(RuntimeError):
    """The engine was closed before (or while) the request was queued."""


@dataclass
class _Job:
    stream: str
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future


@dataclass
class _SourceJob(_Job):
    image: np.ndarray


@dataclass
class _FrameJob(_Job):
    kp6: np.ndarray | None  # None: the stream's predictor fills it in (advance must be set)
    advance: bool  # observe kp6 (or predict it) with the stream's predictor
    draw: bool  # render a frame (False: only the predictor advances)
    index: int | None = None  # the stream's frame index, for late sets (correct())
    failed: bool = False  # set by the worker when it delivered an error
    forecast: np.ndarray | None = None  # set by the worker: see PlayedFrame


@dataclass(frozen=True)
class PlayedFrame:
    """What :meth:`SynthesisEngine.play` gives for one frame."""

    kp6: np.ndarray  # the set used: the observed one, or the predictor's
    frame: np.ndarray | None  # uint8 H x W x 3 RGB; None when not drawn
    # for an observed set, the predictor's forecast of it made just before (None for a
    # stream's first set, and for predicted ones): the edge's measure of its gaps' quality
    forecast: np.ndarray | None = None


@dataclass
class _DropJob:
    stream: str


@dataclass
class _CorrectJob:
    stream: str
    index: int
    kp6: np.ndarray


MAX_REPLAY = 64  # frames after a stream's last observed set that a late set can still correct


@dataclass
class _History:
    """A stream's predictor since its last observed set (worker thread only)."""

    snapshot: object  # the predictor just after that set
    since: list[int | None]  # the frames it has predicted since, by index (None: not given)


_STOP = object()


def _resolve(future: asyncio.Future, result: Any, error: BaseException | None) -> None:
    """Runs on the future's loop: settle it unless it was cancelled or settled already."""
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


def _deliver(job: _Job, result: Any = None, error: BaseException | None = None) -> None:
    """From the worker: hand a result or an error to the job's loop."""
    try:
        job.loop.call_soon_threadsafe(_resolve, job.future, result, error)
    except RuntimeError:  # the loop is closed: nobody is waiting any more
        log.debug("dropping the result for stream %r: its event loop is closed", job.stream)


def image_to_tensor(image: np.ndarray, device: torch.device) -> torch.Tensor:
    """uint8 H x W x 3 RGB -> float 1 x 3 x H x W in [0, 1] on ``device``."""
    tensor = torch.from_numpy(np.ascontiguousarray(image)).to(device)
    return tensor.permute(2, 0, 1).unsqueeze(0).float().div_(255)


def tensor_to_uint8(images: torch.Tensor) -> np.ndarray:
    """float B x 3 x H x W in [0, 1] -> uint8 B x H x W x 3 (rounded, clamped), on the CPU."""
    scaled = images.clamp(0, 1).mul(255).add_(0.5).to(torch.uint8)
    return scaled.permute(0, 2, 3, 1).cpu().numpy()


class SynthesisEngine:
    """Renders keypoint sets into frames for many streams on one worker thread.

    The networks are put in eval mode and moved to ``device``; frames come from a
    :class:`~kpvid.models.Synthesizer` made of them (which renders with an optimized copy of
    the generator). All methods are called from the event loop (or any thread); ``set_source``
    and ``render`` must be awaited on a running loop.
    A failure in the model fails only the futures of the jobs involved (a failed batch is
    retried one job at a time to find them); the worker keeps running. ``new_predictor`` makes
    each stream's keypoint predictor (see :func:`kpvid.models.predictors.predictor_factory`);
    ``half`` renders in float16 (see :class:`~kpvid.models.Synthesizer`).
    """

    def __init__(self, kp_detector: Detector, generator: OcclusionAwareGenerator,
                 device: torch.device | str, max_batch: int = 8,
                 new_predictor: Callable[[], Predictor] = ConstantVelocity,
                 half: bool = False, overload: OverloadOptions | None = None) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        self.device = torch.device(device)
        self.synthesizer = Synthesizer(kp_detector.to(self.device), generator.to(self.device),
                                       half=half)
        self.max_batch = max_batch
        self.new_predictor = new_predictor
        self.predictor_name = new_predictor().name
        self.batches = 0  # successful batched decodes
        self.frames = 0  # frames delivered
        self.errors = 0  # jobs failed by an exception in the model
        self.corrections = 0  # late sets replayed into a predictor
        self.busy_seconds = 0.0  # the worker's time on frames (prediction and synthesis)
        self.render_rate = RenderRate(overload or OverloadOptions())  # updated by the worker
        self._sources: dict[str, PreparedSource] = {}  # worker thread only
        self._predictors: dict[str, Predictor] = {}  # worker thread only
        self._observed: set[str] = set()  # streams whose predictor has seen a set; worker only
        self._histories: dict[str, _History] = {}  # worker only
        self._queue: queue.Queue = queue.Queue()
        self._lock = threading.Lock()
        self._closed = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="kpvid-synthesis", daemon=True)
        self._thread.start()

    @property
    def worker_thread_id(self) -> int | None:
        """The worker thread's native id (the kernel's, for per-thread CPU accounting)."""
        return self._thread.native_id

    @property
    def render_every(self) -> int:
        """Render every k-th frame of each stream (1: all): more than 1 while the worker is
        overloaded (:mod:`kpvid.receiver.overload`)."""
        return self.render_rate.every

    @property
    def queued(self) -> int:
        """Jobs waiting for the worker (not counting the batch it is on)."""
        return self._queue.qsize()

    @property
    def closed(self) -> bool:
        """True once :meth:`close` has been called."""
        return self._closed

    async def set_source(self, stream: str, image: np.ndarray) -> np.ndarray:
        """Use ``image`` (uint8 H x W x 3 RGB at the model's frame size) as ``stream``'s source.

        Returns the source keypoints as ``kp6`` (K, 6). Replaces any earlier source; renders
        queued before this call still use the earlier one."""
        image = np.asarray(image)
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"source image must be uint8 H x W x 3, got {image.dtype} "
                             f"{image.shape}")
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._submit(_SourceJob(stream, loop, future, image.copy()))
        return await future

    async def render(self, stream: str, kp6: np.ndarray) -> np.ndarray:
        """The frame (uint8 H x W x 3 RGB) for driving keypoints ``kp6`` (K, 6) of ``stream``;
        the stream's predictor is not touched.

        Fails with :class:`UnknownStreamError` (a KeyError) when the stream has no source."""
        played = await self._frame(stream, check_kp6(kp6).copy(), advance=False, draw=True)
        assert played.frame is not None
        return played.frame

    async def play(self, stream: str, kp6: np.ndarray | None, draw: bool = True,
                   index: int | None = None) -> PlayedFrame:
        """The next frame of ``stream``: its predictor observes ``kp6`` (K, 6), or predicts the
        set when ``kp6`` is None (open loop). The frame is None when ``draw`` is False (the
        predictor advances, nothing is rendered). ``index``, the frame's index in the stream,
        lets a late set for it :meth:`correct` the predictor.

        Fails with :class:`UnknownStreamError` when drawing for a stream with no source, and
        RuntimeError when predicting for a stream that has observed nothing yet."""
        kp6 = None if kp6 is None else check_kp6(kp6).copy()
        return await self._frame(stream, kp6, advance=True, draw=draw, index=index)

    def correct(self, stream: str, index: int, kp6: np.ndarray) -> None:
        """Frame ``index`` of ``stream`` was played from a prediction, and its set ``kp6`` came
        after all: replay the predictor from it (see the module docstring). Queued in order with
        the plays; a no-op when a later set has been observed since, when the frame was not
        played with an index or is more than :data:`MAX_REPLAY` frames back, and once the engine
        is closed."""
        with contextlib.suppress(EngineClosedError):
            self._submit(_CorrectJob(stream, index, check_kp6(kp6).copy()))

    async def _frame(self, stream: str, kp6: np.ndarray | None, advance: bool, draw: bool,
                     index: int | None = None) -> PlayedFrame:
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._submit(_FrameJob(stream, loop, future, kp6, advance, draw, index))
        return await future

    async def warm_up(self, frame_size: int) -> None:
        """Make a source of a noise image and render one frame of it, so that the one-off costs
        of the first call (each fast convolution timing its ways, the backends' kernel set-up)
        are paid before a stream's first frame is due, not by it."""
        image = np.random.default_rng(0).integers(0, 256, (frame_size, frame_size, 3),
                                                  dtype=np.uint8)
        stream = "(warm-up)"  # not a valid stream name (protocol.messages): no sender's
        try:
            await self.render(stream, await self.set_source(stream, image))
        finally:
            self.drop(stream)

    def drop(self, stream: str) -> None:
        """Forget ``stream``'s source and predictor; later renders for it fail. Queued in order
        with renders; a no-op once the engine is closed."""
        with contextlib.suppress(EngineClosedError):
            self._submit(_DropJob(stream))

    def close(self) -> None:
        """Stop the worker (after the batch in progress, if any) and fail every queued job with
        :class:`EngineClosedError`. Idempotent; blocks for at most one batch."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._stop.set()
        self._queue.put(_STOP)
        self._thread.join()
        while True:
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                break
            self._fail_closed(job)

    def _submit(self, job: _Job | _DropJob | _CorrectJob) -> None:
        with self._lock:
            if self._closed:
                raise EngineClosedError("synthesis engine is closed")
            self._queue.put(job)

    @staticmethod
    def _fail_closed(job: object) -> None:
        if isinstance(job, _Job):
            _deliver(job, error=EngineClosedError("synthesis engine closed"))

    # ---- worker thread ----

    def _run(self) -> None:
        pending: deque = deque()  # jobs taken from the queue while draining, not yet run
        with torch.inference_mode():
            while True:
                job = pending.popleft() if pending else self._queue.get()
                if job is _STOP or self._stop.is_set():
                    self._fail_closed(job)
                    break
                batch = [job]
                if isinstance(job, _FrameJob):
                    advancing = {job.stream} if job.advance else set()
                    while len(batch) < self.max_batch:
                        try:
                            nxt = self._queue.get_nowait()
                        except queue.Empty:
                            break
                        if isinstance(nxt, _FrameJob) and not (nxt.advance
                                                               and nxt.stream in advancing):
                            batch.append(nxt)
                            if nxt.advance:
                                advancing.add(nxt.stream)
                        else:
                            pending.append(nxt)
                            break
                started = time.perf_counter()
                try:
                    self._dispatch(batch)
                except Exception as exc:  # a bug, not a model error: keep the worker alive
                    log.exception("synthesis worker error")
                    for failed in batch:
                        if isinstance(failed, _Job):
                            _deliver(failed, error=exc)
                if isinstance(job, _FrameJob):  # a source's one-off cost is not load
                    self._account(time.perf_counter() - started)
        for job in pending:
            self._fail_closed(job)

    def note_lag(self, seconds: float) -> None:
        """A stream played a frame ``seconds`` past its deadline: the render step may rise
        at once (:meth:`RenderRate.note_lag`). Called from the event loop."""
        before = self.render_rate.every
        self._log_step(before, self.render_rate.note_lag(seconds, time.perf_counter(),
                                                          self.busy_seconds))

    def _account(self, busy: float) -> None:
        """Add ``busy`` seconds of frame work; the render step follows the load."""
        self.busy_seconds += busy
        before = self.render_rate.every
        self._log_step(before, self.render_rate.update(time.perf_counter(), self.busy_seconds))

    def _log_step(self, before: int, after: int) -> None:
        if after != before:
            (log.warning if after > before else log.info)(
                "synthesis %s (busy %.0f %%): rendering %s",
                "overloaded" if after > before else "load down",
                100 * (self.render_rate.share or 0),
                "every frame" if after == 1 else f"1 frame in {after} of each stream")

    def _dispatch(self, batch: list) -> None:
        job = batch[0]
        if isinstance(job, _FrameJob):
            self._render_batch(self._step_predictors(batch))
        elif isinstance(job, _SourceJob):
            self._set_source(job)
        elif isinstance(job, _CorrectJob):
            self._correct(job)
        elif isinstance(job, _DropJob):
            self._sources.pop(job.stream, None)
            self._predictors.pop(job.stream, None)
            self._observed.discard(job.stream)
            self._histories.pop(job.stream, None)

    def _set_source(self, job: _SourceJob) -> None:
        try:
            source = self.synthesizer.prepare(image_to_tensor(job.image, self.device))
            self._sources[job.stream] = source
            kp6 = to_kp6(source.kp["value"][0].cpu().numpy(),
                         source.kp["jacobian"][0].cpu().numpy())
        except Exception as exc:
            self.errors += 1
            log.warning("set_source failed for stream %r: %s", job.stream, exc)
            _deliver(job, error=exc)
            return
        _deliver(job, kp6)

    def _step_predictors(self, jobs: list[_FrameJob]) -> list[_FrameJob]:
        """Step the predictors of the advancing jobs together, filling in their kp6; returns
        the jobs left to draw. A job that cannot step (a prediction before any observation, a
        wrong keypoint count) fails alone, before anything steps."""
        stepping = []
        for job in jobs:
            if not job.advance or job.future.done():
                continue
            problem = self._cannot_step(job)
            if problem is None:
                stepping.append(job)
            else:
                job.failed = True
                _deliver(job, error=problem)
        if stepping:
            predictors = [self._predictors.setdefault(job.stream, self.new_predictor())
                          for job in stepping]
            try:
                forecasting = [(job, predictor) for job, predictor in zip(stepping, predictors)
                               if job.kp6 is not None and job.stream in self._observed]
                forecasts = forecast_predictors([predictor for _, predictor in forecasting])
                for (job, _), forecast in zip(forecasting, forecasts):
                    job.forecast = forecast
                sets = step_predictors(predictors, [job.kp6 for job in stepping])
            except Exception as exc:  # a bug in a predictor: these streams' frames fail
                self.errors += len(stepping)
                log.exception("prediction failed for streams %s",
                              sorted({job.stream for job in stepping}))
                for job in stepping:
                    job.failed = True
                    _deliver(job, error=exc)
            else:
                for job, predictor, kp6 in zip(stepping, predictors, sets):
                    self._remember(job, predictor)
                    job.kp6 = kp6
                    self._observed.add(job.stream)
                    if not job.draw:
                        _deliver(job, PlayedFrame(kp6, None, job.forecast))
        return [job for job in jobs if job.draw and not job.failed]

    def _remember(self, job: _FrameJob, predictor: Predictor) -> None:
        """Keep what a late set for one of the stream's coming frames needs (_correct)."""
        if job.kp6 is not None:
            self._histories[job.stream] = _History(predictor.snapshot(), [])
            return
        history = self._histories.get(job.stream)
        if history is not None:
            history.since.append(job.index)
            if len(history.since) > MAX_REPLAY:
                del self._histories[job.stream]

    def _correct(self, job: _CorrectJob) -> None:
        history = self._histories.get(job.stream)
        predictor = self._predictors.get(job.stream)
        if history is None or predictor is None or job.index not in history.since:
            return
        position = history.since.index(job.index)
        try:
            predictor.restore(history.snapshot)
            for _ in range(position):
                predictor.predict()
            predictor.observe(job.kp6)
            snapshot = predictor.snapshot()
            for _ in history.since[position + 1:]:
                predictor.predict()
        except Exception:  # a bug in a predictor: the stream goes on from its predictions
            log.exception("stream %r: replaying late set %d failed", job.stream, job.index)
            self._histories.pop(job.stream, None)
            return
        self._histories[job.stream] = _History(snapshot, history.since[position + 1:])
        self.corrections += 1

    def _cannot_step(self, job: _FrameJob) -> Exception | None:
        if job.kp6 is None:
            if job.stream not in self._observed:
                return RuntimeError(f"stream {job.stream!r}: nothing observed to predict from")
            return None
        return self._wrong_kp_count(job)

    def _wrong_kp_count(self, job: _FrameJob) -> Exception | None:
        source = self._sources.get(job.stream)
        assert job.kp6 is not None
        if source is not None and job.kp6.shape[0] != source.num_kp:
            return ValueError(f"stream {job.stream!r}: {job.kp6.shape[0]} keypoints, the model "
                              f"has {source.num_kp}")
        return None

    def _render_batch(self, jobs: list[_FrameJob]) -> None:
        ready: list[tuple[_FrameJob, PreparedSource]] = []
        for job in jobs:
            if job.future.done():  # cancelled while queued (a racy read, only saves work)
                continue
            assert job.kp6 is not None  # filled in by _step_predictors
            source = self._sources.get(job.stream)
            if source is None:
                _deliver(job, error=UnknownStreamError(
                    f"no source image for stream {job.stream!r} (never set, or dropped)"))
            elif (problem := self._wrong_kp_count(job)) is not None:
                _deliver(job, error=problem)
            else:
                ready.append((job, source))
        if not ready:
            return
        try:
            frames = self._decode(ready)
        except Exception as exc:
            if len(ready) > 1:  # find the culprit(s): the others still get their frames
                for one in ready:
                    self._render_batch([one[0]])
                return
            self.errors += 1
            log.warning("render failed for stream %r: %s", ready[0][0].stream, exc)
            _deliver(ready[0][0], error=exc)
            return
        self.batches += 1
        self.frames += len(ready)
        for (job, _), frame in zip(ready, frames):
            _deliver(job, PlayedFrame(job.kp6, np.ascontiguousarray(frame), job.forecast))

    def _decode(self, ready: list[tuple[_FrameJob, PreparedSource]]) -> np.ndarray:
        kp_driving = kp_dict_from_kp6(np.stack([job.kp6 for job, _ in ready]),  # type: ignore[misc]
                                      self.device)
        frames = self.synthesizer.render_many([source for _, source in ready], kp_driving)
        return tensor_to_uint8(frames)
