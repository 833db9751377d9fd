"""Frame synthesis for all streams on one dedicated worker thread, batched across streams.

The event loop never runs a model: :meth:`SynthesisEngine.set_source` and
:meth:`SynthesisEngine.render` queue a job and await an asyncio future that the worker resolves
with ``loop.call_soon_threadsafe``. The worker takes one job; for a render it also drains the
renders already queued behind it (up to ``max_batch``, stopping at the first job of another
kind so that jobs keep their order) and runs a single batched ``generator.decode`` over them,
whatever streams they belong to. Each stream's source features (``generator.encode_source``) and
source keypoints are computed once, by ``set_source``. Reconstruction mode: the driving
keypoints are used as absolute keypoints.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
from collections import deque
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from kpvid.models.predictors import check_kp6, to_kp6

log = logging.getLogger(__name__)


class UnknownStreamError(KeyError):
    """A render for a stream with no source image (never set, or dropped)."""

    def __str__(self) -> str:  # KeyError would show the repr of the message
        return str(self.args[0]) if self.args else ""


class EngineClosedError(RuntimeError):
    """The engine was closed before (or while) the request was queued."""


@dataclass
class _SourceState:
    image: torch.Tensor  # 1 x 3 x H x W in [0, 1], on the engine's device
    features: torch.Tensor  # generator.encode_source(image)
    kp_source: dict[str, torch.Tensor]  # value 1 x K x 2, jacobian 1 x K x 2 x 2


@dataclass
class _Job:
    stream: str
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future


@dataclass
class _SourceJob(_Job):
    image: np.ndarray


@dataclass
class _RenderJob(_Job):
    kp6: np.ndarray


@dataclass
class _DropJob:
    stream: str


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

    The networks are put in eval mode and moved to ``device``. All methods are called from the
    event loop (or any thread); ``set_source`` and ``render`` must be awaited on a running loop.
    A failure in the model fails only the futures of the jobs involved (a failed batch is
    retried one job at a time to find them); the worker keeps running.
    """

    def __init__(self, kp_detector: torch.nn.Module, generator: torch.nn.Module,
                 device: torch.device | str, max_batch: int = 8) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        self.device = torch.device(device)
        self.kp_detector = kp_detector.to(self.device).eval()
        self.generator = generator.to(self.device).eval()
        self.max_batch = max_batch
        self.batches = 0  # successful batched decodes
        self.frames = 0  # frames delivered
        self.errors = 0  # jobs failed by an exception in the model
        self._sources: dict[str, _SourceState] = {}  # worker thread only
        self._queue: queue.Queue = queue.Queue()
        self._lock = threading.Lock()
        self._closed = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="kpvid-synthesis", daemon=True)
        self._thread.start()

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
        """The frame (uint8 H x W x 3 RGB) for driving keypoints ``kp6`` (K, 6) of ``stream``.

        Fails with :class:`UnknownStreamError` (a KeyError) when the stream has no source."""
        kp6 = check_kp6(kp6).copy()
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._submit(_RenderJob(stream, loop, future, kp6))
        return await future

    def drop(self, stream: str) -> None:
        """Forget ``stream``'s source; later renders for it fail. Queued in order with renders;
        a no-op once the engine is closed."""
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

    def _submit(self, job: _Job | _DropJob) -> None:
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
                if isinstance(job, _RenderJob):
                    while len(batch) < self.max_batch:
                        try:
                            nxt = self._queue.get_nowait()
                        except queue.Empty:
                            break
                        if isinstance(nxt, _RenderJob):
                            batch.append(nxt)
                        else:
                            pending.append(nxt)
                            break
                try:
                    self._dispatch(batch)
                except Exception as exc:  # a bug, not a model error: keep the worker alive
                    log.exception("synthesis worker error")
                    for failed in batch:
                        if isinstance(failed, _Job):
                            _deliver(failed, error=exc)
        for job in pending:
            self._fail_closed(job)

    def _dispatch(self, batch: list) -> None:
        job = batch[0]
        if isinstance(job, _RenderJob):
            self._render_batch(batch)
        elif isinstance(job, _SourceJob):
            self._set_source(job)
        elif isinstance(job, _DropJob):
            self._sources.pop(job.stream, None)

    def _set_source(self, job: _SourceJob) -> None:
        try:
            image = image_to_tensor(job.image, self.device)
            kp = self.kp_detector(image)
            value = kp["value"]
            jacobian = kp.get("jacobian")
            if jacobian is None:  # a detector without jacobians: identity is the same motion
                jacobian = torch.eye(2, device=self.device).expand(*value.shape[:2], 2, 2)
            kp_source = {"value": value, "jacobian": jacobian.contiguous()}
            features = self.generator.encode_source(image)
            self._sources[job.stream] = _SourceState(image, features, kp_source)
            kp6 = to_kp6(value[0].cpu().numpy(), kp_source["jacobian"][0].cpu().numpy())
        except Exception as exc:
            self.errors += 1
            log.warning("set_source failed for stream %r: %s", job.stream, exc)
            _deliver(job, error=exc)
            return
        _deliver(job, kp6)

    def _render_batch(self, jobs: list[_RenderJob]) -> None:
        ready: list[tuple[_RenderJob, _SourceState]] = []
        for job in jobs:
            if job.future.done():  # cancelled while queued (a racy read, only saves work)
                continue
            state = self._sources.get(job.stream)
            if state is None:
                _deliver(job, error=UnknownStreamError(
                    f"no source image for stream {job.stream!r} (never set, or dropped)"))
            elif job.kp6.shape[0] != state.kp_source["value"].shape[1]:
                _deliver(job, error=ValueError(
                    f"stream {job.stream!r}: {job.kp6.shape[0]} keypoints, the model has "
                    f"{state.kp_source['value'].shape[1]}"))
            else:
                ready.append((job, state))
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
            _deliver(job, np.ascontiguousarray(frame))

    def _decode(self, ready: list[tuple[_RenderJob, _SourceState]]) -> np.ndarray:
        states = [state for _, state in ready]
        kp6 = torch.from_numpy(np.stack([job.kp6 for job, _ in ready])).to(self.device)
        kp_driving = {"value": kp6[..., :2].contiguous(),
                      "jacobian": kp6[..., 2:].reshape(*kp6.shape[:2], 2, 2)}
        kp_source = {key: torch.cat([s.kp_source[key] for s in states])
                     for key in ("value", "jacobian")}
        out = self.generator.decode(torch.cat([s.features for s in states]),
                                    torch.cat([s.image for s in states]), kp_driving, kp_source)
        return tensor_to_uint8(out["prediction"])
