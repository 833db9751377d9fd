"""Synthesis engine: batches match per-frame FOMM, the loop stays free, errors stay local."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from unittest.mock import patch

import numpy as np
import pytest
import torch

from kpvid.models import build_networks
from kpvid.models.predictors import ConstantVelocity, step_predictors
from kpvid.protocol.keypoint_set import to_kp6
from kpvid.receiver.synthesis import EngineClosedError, SynthesisEngine, UnknownStreamError


@pytest.fixture()
def networks(tiny_config):
    torch.manual_seed(0)
    kp_detector, generator = build_networks(tiny_config)
    return kp_detector.eval(), generator.eval()


def images(n: int, seed: int) -> np.ndarray:
    """n smooth 32x32 RGB images, distinct per seed."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:32, 0:32] / 31
    out = []
    for _ in range(n):
        a, b, c = rng.uniform(0, 1, 3)
        img = np.stack([a * x + (1 - a) * y, np.sin(6 * b * x + c) * 0.5 + 0.5, c * y], -1)
        out.append((img * 255).astype(np.uint8))
    return np.stack(out)


def to_tensor(image: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255


def reference_frame(kp_detector, generator, source: np.ndarray, kp6: np.ndarray) -> np.ndarray:
    """Plain per-frame FOMM, converted to uint8 like training/visualize.to_uint8."""
    with torch.no_grad():
        src = to_tensor(source)
        kp_driving = {"value": torch.from_numpy(kp6[None, :, :2].copy()),
                      "jacobian": torch.from_numpy(kp6[None, :, 2:].reshape(1, -1, 2, 2).copy())}
        pred = generator(src, kp_driving, kp_detector(src))["prediction"]
    array = pred.clamp(0, 1).permute(0, 2, 3, 1).numpy()[0]
    return (array * 255 + 0.5).astype(np.uint8)


def driving_kp6(kp_detector, image: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        kp = kp_detector(to_tensor(image))
    return to_kp6(kp["value"][0].numpy(), kp["jacobian"][0].numpy())


class Gate:
    """Holds the engine's next batched render until :meth:`open` (lets a queue build up)."""

    def __init__(self, engine: SynthesisEngine) -> None:
        self.entered = threading.Event()  # the worker is in the held render
        self._open = threading.Event()
        original = engine.synthesizer.render_many

        def render_many(*args, **kwargs):
            if not self.entered.is_set():
                self.entered.set()
                self._open.wait(5)
            return original(*args, **kwargs)

        engine.synthesizer.render_many = render_many

    async def held(self) -> None:
        """Returns once the worker sits in the held render."""
        await until(self.entered.is_set)

    def open(self) -> None:
        self._open.set()


async def until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    """Yield to the event loop until ``condition()`` holds (AssertionError after ``timeout``)."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.001)


def test_batched_renders_across_streams_match_per_frame_fomm(networks):
    kp_detector, generator = networks
    sources = images(3, seed=1)
    drivers = images(4, seed=2)
    kp6s = [driving_kp6(kp_detector, d) for d in drivers]
    expected = {(s, d): reference_frame(kp_detector, generator, sources[s], kp6s[d])
                for s in range(3) for d in range(4)}

    async def main():
        engine = SynthesisEngine(kp_detector, generator, torch.device("cpu"), max_batch=8)
        try:
            source_kp = await asyncio.gather(
                *(engine.set_source(f"s{s}", sources[s]) for s in range(3)))
            gate = Gate(engine)
            jobs = [(s, d) for d in range(4) for s in range(3)]
            tasks = [asyncio.ensure_future(engine.render(f"s{s}", kp6s[d])) for s, d in jobs[:1]]
            await gate.held()  # the worker sits in its first render (a batch of one)
            tasks += [asyncio.ensure_future(engine.render(f"s{s}", kp6s[d])) for s, d in jobs[1:]]
            await until(lambda: engine.queued == 11)  # the other 11 wait in the queue
            gate.open()
            frames = await asyncio.gather(*tasks)
            return source_kp, dict(zip(jobs, frames)), engine.batches, engine.frames
        finally:
            engine.close()

    source_kp, frames, batches, n_frames = asyncio.run(main())
    for s in range(3):
        np.testing.assert_allclose(source_kp[s], driving_kp6(kp_detector, sources[s]), atol=1e-6)
    for key, frame in frames.items():
        assert frame.shape == (32, 32, 3) and frame.dtype == np.uint8
        diff = np.abs(frame.astype(int) - expected[key].astype(int)).max()
        assert diff <= 1, (key, diff)
    assert n_frames == 12
    assert batches < n_frames  # 1 (the gated one) + 8 + 3 -> 3 batches
    assert batches == 3


def test_event_loop_stays_responsive_during_a_slow_render(networks):
    kp_detector, generator = networks

    async def main():
        engine = SynthesisEngine(kp_detector, generator, "cpu")
        original = engine.synthesizer.render_many

        def slow_render_many(*args, **kwargs):
            time.sleep(0.3)
            return original(*args, **kwargs)

        engine.synthesizer.render_many = slow_render_many
        try:
            kp6 = await engine.set_source("a", images(1, seed=3)[0])
            ticks = 0
            render = asyncio.ensure_future(engine.render("a", kp6))
            while not render.done():
                await asyncio.sleep(0.01)
                ticks += 1
            await render
            return ticks
        finally:
            engine.close()

    # a render on the loop would allow at most one tick; a loaded machine slows the ticks
    assert asyncio.run(main()) >= 3


def test_unknown_and_dropped_streams_fail_only_their_requests(networks):
    kp_detector, generator = networks

    async def main():
        engine = SynthesisEngine(kp_detector, generator, "cpu")
        try:
            kp6 = await engine.set_source("a", images(1, seed=4)[0])
            await engine.set_source("b", images(1, seed=5)[0])
            with pytest.raises(UnknownStreamError, match="nope"):
                await engine.render("nope", kp6)
            assert isinstance(UnknownStreamError("x"), KeyError)
            engine.drop("b")
            results = await asyncio.gather(engine.render("a", kp6), engine.render("b", kp6),
                                           return_exceptions=True)
            assert isinstance(results[0], np.ndarray)
            assert isinstance(results[1], UnknownStreamError)
            with pytest.raises(ValueError, match="keypoints"):  # wrong K for the model
                await engine.render("a", kp6[:2])
            with pytest.raises(ValueError):
                await engine.render("a", kp6[:, :4])
            with pytest.raises(ValueError):
                await engine.set_source("c", np.zeros((32, 32), np.uint8))
        finally:
            engine.close()

    asyncio.run(main())


def test_model_errors_fail_only_the_affected_futures(networks):
    kp_detector, generator = networks

    async def main():
        engine = SynthesisEngine(kp_detector, generator, "cpu")
        try:
            good = await engine.set_source("good", images(1, seed=6)[0])
            await engine.set_source("bad", images(1, seed=7)[0])
            gate = Gate(engine)
            gated = engine.synthesizer.render_many

            def render_many(sources, kp_driving):
                if torch.isnan(kp_driving["value"]).any():
                    raise FloatingPointError("nan keypoints")
                return gated(sources, kp_driving)

            engine.synthesizer.render_many = render_many
            bad = good.copy()
            bad[0, 0] = np.nan
            blocker = asyncio.ensure_future(engine.render("good", good))
            await gate.held()  # the worker is busy: the next four make one batch
            tasks = [asyncio.ensure_future(engine.render(s, k))
                     for s, k in [("good", good), ("good", good), ("bad", bad), ("good", good)]]
            await until(lambda: engine.queued == 4)
            gate.open()
            await blocker
            results = await asyncio.gather(*tasks, return_exceptions=True)
            assert [type(r).__name__ for r in results] == \
                ["ndarray", "ndarray", "FloatingPointError", "ndarray"]
            assert engine.errors == 1
            assert (await engine.render("good", good)).shape == (32, 32, 3)  # worker alive
        finally:
            engine.close()

    asyncio.run(main())


def test_close_is_idempotent_and_fails_queued_requests(networks):
    kp_detector, generator = networks

    async def main():
        engine = SynthesisEngine(kp_detector, generator, "cpu")
        kp6 = await engine.set_source("a", images(1, seed=8)[0])
        gate = Gate(engine)
        tasks = [asyncio.ensure_future(engine.render("a", kp6))]
        await gate.held()  # the first render is in the held render_many
        tasks += [asyncio.ensure_future(engine.render("a", kp6)) for _ in range(2)]
        await until(lambda: engine.queued == 2)  # two more are queued
        closer = asyncio.get_running_loop().run_in_executor(None, engine.close)
        await until(lambda: engine.closed)
        gate.open()
        await closer
        engine.close()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        assert isinstance(results[0], np.ndarray)  # the batch in progress completes
        assert all(isinstance(r, EngineClosedError) for r in results[1:])
        with pytest.raises(EngineClosedError):
            await engine.render("a", kp6)
        engine.drop("a")  # a no-op after close
        assert not engine._thread.is_alive()

    asyncio.run(main())


def test_cancelled_render_does_not_break_the_engine(networks):
    kp_detector, generator = networks

    async def main():
        engine = SynthesisEngine(kp_detector, generator, "cpu")
        try:
            kp6 = await engine.set_source("a", images(1, seed=9)[0])
            task = asyncio.ensure_future(engine.render("a", kp6))
            await asyncio.sleep(0)
            task.cancel()
            frame = await engine.render("a", kp6)
            assert frame.shape == (32, 32, 3)
        finally:
            engine.close()

    asyncio.run(main())


def test_play_steps_every_streams_predictor_in_one_batch(networks):
    """Two streams played together: each gets its own predictor's sets (observed or predicted,
    the same as a predictor driven alone) and the frame of that set; draw=False advances the
    predictor without rendering; drop() forgets it."""
    kp_detector, generator = networks
    kp6s = [driving_kp6(kp_detector, image) for image in images(6, seed=7)]
    source = images(1, seed=8)[0]
    plans = {"a": [0, 1, None, None, 2, None], "b": [3, None, 4, None, None, 5]}
    alone = {}
    for name, plan in plans.items():
        predictor = ConstantVelocity()
        alone[name] = [step_predictors([predictor], [None if i is None else kp6s[i]])[0]
                       for i in plan]
    stepped = []

    def counting(predictors, sets):
        stepped.append(len(predictors))
        return step_predictors(predictors, sets)

    async def main():
        engine = SynthesisEngine(kp_detector, generator, "cpu", max_batch=4)
        try:
            for name in plans:
                await engine.set_source(name, source)
            with pytest.raises(RuntimeError, match="nothing observed"):
                await engine.play("a", None)
            await engine.set_source("blocker", source)
            with patch("kpvid.receiver.synthesis.step_predictors", counting):
                for t in range(6):
                    # the worker is busy with a gated render while both plays queue up
                    gate = Gate(engine)
                    blocker = asyncio.ensure_future(engine.render("blocker", kp6s[0]))
                    await gate.held()
                    draw = t != 3
                    tasks = [asyncio.ensure_future(engine.play(
                        name, None if plan[t] is None else kp6s[plan[t]], draw=draw))
                        for name, plan in plans.items()]
                    await until(lambda: engine.queued == len(plans))
                    gate.open()
                    await blocker
                    del engine.synthesizer.render_many  # the next gate wraps the method again
                    for name, played in zip(plans, await asyncio.gather(*tasks)):
                        kp6, frame = played.kp6, played.frame
                        np.testing.assert_allclose(kp6, alone[name][t], atol=1e-6)
                        if draw:
                            expected = reference_frame(kp_detector, generator, source, kp6)
                            assert np.abs(frame.astype(int) - expected).max() <= 1
                        else:
                            assert frame is None
            assert stepped == [2] * 6  # both streams' predictors in one call per frame
            engine.drop("a")
            with pytest.raises(RuntimeError, match="nothing observed"):
                await engine.play("a", None, draw=False)
        finally:
            engine.close()

    asyncio.run(main())


def test_warm_up_pays_the_first_call_costs_and_leaves_no_stream(networks):
    from kpvid.models.fast_conv import FastConv2d

    kp_detector, generator = networks

    async def main():
        engine = SynthesisEngine(kp_detector, generator, "cpu")
        try:
            await engine.warm_up(32)
            # a stream's first source and frame time no convolution: the warm-up did
            with patch.object(FastConv2d, "_fastest", side_effect=AssertionError("timed")):
                kp6 = await engine.set_source("a", images(1, seed=6)[0])
                assert (await engine.render("a", kp6)).shape == (32, 32, 3)
            with pytest.raises(UnknownStreamError):  # the warm-up's source is gone
                await engine.render("(warm-up)", kp6)
        finally:
            engine.close()

    asyncio.run(main())


def test_a_late_set_replays_the_predictor_from_it(networks):
    kp_detector, generator = networks
    source = images(1, seed=5)[0]
    a = driving_kp6(kp_detector, source)
    b = a + np.float32(0.01)

    async def main() -> list[np.ndarray]:
        engine = SynthesisEngine(kp_detector, generator, "cpu")  # constant-velocity streams
        try:
            await engine.set_source("s", source)
            await engine.play("s", a, draw=False, index=0)
            held = (await engine.play("s", None, draw=False, index=1)).kp6
            np.testing.assert_allclose(held, a)  # one set: constant velocity holds it
            await engine.play("s", None, draw=False, index=2)
            engine.correct("s", 1, b)  # set 1 comes after its frame was played
            engine.correct("s", 7, b)  # never played: ignored
            out = [(await engine.play("s", None, draw=False, index=i)).kp6 for i in (3, 4)]
            assert engine.corrections == 1
            await engine.play("s", a, draw=False, index=5)
            engine.correct("s", 2, b)  # older than the set observed since: ignored
            assert (await engine.play("s", None, draw=False, index=6)).kp6 is not None
            assert engine.corrections == 1
            return out
        finally:
            engine.close()

    three, four = asyncio.run(main())
    step = b - a  # from a at 0 and b at 1: one step a frame
    np.testing.assert_allclose(three, b + 2 * step, atol=1e-6)
    np.testing.assert_allclose(four, b + 3 * step, atol=1e-6)
