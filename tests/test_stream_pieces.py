"""The transport-free pieces a live stream and the offline simulation share, through their public
interfaces: the sender's FramePipeline, the edge's KeypointIntake and Playout."""

from __future__ import annotations

import numpy as np
import pytest

from kpvid.protocol import Hello, Keypoints, ProtocolError
from kpvid.protocol.keypoint_set import from_kp6
from kpvid.receiver.keypoint_intake import DecodedSet, IntraRequestTiming, KeypointIntake
from kpvid.receiver.playout import Placed, Playout
from kpvid.receiver.skipped_frames import SkippedFrames
from kpvid.receiver.stream_stats import FrameOrigin, Undrawn
from kpvid.sender.adaptation import AdaptationOptions
from kpvid.sender.frame_pipeline import FramePipeline
from tests.test_keypoint_stream import motion

FPS = 30.0


def hello(observe: int = 1, predict: int = 0, codec: str = "delta") -> Hello:
    return Hello(stream="s", fps=FPS, observe=observe, predict=predict, frame_size=64,
                 num_kp=10, model_id="m", codec=codec, start_time=100.0)


# ------------------------------------------------------------------ the sender's pipeline
def test_pipeline_sends_the_schedule_and_says_what_is_skipped() -> None:
    pipeline = FramePipeline(hello(observe=2, predict=1))
    value, jacobian = motion(6)
    assert [pipeline.is_observed(i) for i in range(6)] == [True, True, False] * 2
    message = pipeline.keypoints(1, value[1], jacobian[1], capture_time=100.0 + 1 / FPS + 0.02)
    assert (message.frame_index, message.skip_after, message.capture_offset_ms) == (1, 1, 20)
    assert pipeline.keypoints(3, value[3], jacobian[3], 100.1).skip_after == 0  # inside a run
    assert pipeline.adapt(3, value[3]) is None  # no adaptation asked for


def test_pipeline_adapts_only_at_group_starts_and_hears_intra_requests() -> None:
    still = np.zeros((10, 2), np.float32)
    pipeline = FramePipeline(hello(observe=2, predict=1), adapt=AdaptationOptions(max_predict=3))
    adopted = {}
    for i in range(90):
        if pipeline.is_observed(i):
            starts_group = pipeline.schedules.at(i).position(i) == 0
            schedule = pipeline.adapt(i, still)
            if schedule is not None:
                assert starts_group and schedule.start == i
                adopted[i] = schedule
    assert adopted  # nothing moves: N grows, each time from a group's first frame on
    assert max(s.predict for s in adopted.values()) == 3
    value, jacobian = motion(3)
    before = pipeline.encoder.intra_payloads
    pipeline.keypoints(0, value[0], jacobian[0], 100.0)  # a stream's first payload: intra
    pipeline.keypoints(2, value[1], jacobian[1], 100.1)
    pipeline.on_intra_request()
    pipeline.keypoints(4, value[2], jacobian[2], 100.2)
    assert pipeline.encoder.intra_payloads - before == 2


def test_pipeline_stretches_its_groups_while_the_edge_is_overloaded() -> None:
    pipeline = FramePipeline(hello(observe=1, predict=1))
    still = np.zeros((10, 2), np.float32)

    def observed(frames: range) -> list[int]:
        out = []
        for i in frames:
            if pipeline.is_observed(i):
                pipeline.adapt(i, still)
                out.append(i)
        return out

    assert observed(range(0, 4)) == [0, 2]
    pipeline.on_feedback(10, 0, None, render_every=2)  # the edge renders every other frame
    assert observed(range(4, 20)) == [4, 8, 12, 16]  # observe 1, predict 3
    pipeline.on_feedback(20, 0, None, render_every=1)  # the load has gone
    assert observed(range(20, 26)) == [20, 22, 24]


# ------------------------------------------------------------------ the edge's intake
def sent(frames: int, codec: str = "delta") -> list[Keypoints]:
    """Frames 0..frames-1, every one observed, as the sender codes them."""
    pipeline = FramePipeline(hello(codec=codec))
    value, jacobian = motion(frames)
    return [pipeline.keypoints(i, value[i], jacobian[i], 100.0 + i / FPS)
            for i in range(frames)]


def test_intake_decodes_with_capture_times_and_asks_for_intra_on_a_broken_chain() -> None:
    messages = sent(8)
    intake = KeypointIntake(hello(), IntraRequestTiming(kp_interval=0.1, ctrl_interval=0.5))
    first = intake.receive(messages[0], 40, now=1.0)
    assert [d.frame_index for d in first.decoded] == [0] and first.ask_intra_on == ()
    assert first.decoded[0].capture_time == pytest.approx(100.0)
    # 1 is lost: 2 waits for it and the intake asks on both channels, then kp alone at its rate
    asked = [intake.receive(messages[i], 30, now=1.0 + 0.06 * i).ask_intra_on
             for i in range(2, 6)]
    assert asked == [("kp", "ctrl"), (), ("kp",), ()]
    assert (intake.intra_requests.kp, intake.intra_requests.ctrl) == (2, 1)
    late = intake.receive(messages[1], 30, now=1.6)  # the reference after all: all decode
    assert [d.frame_index for d in late.decoded] == [1, 2, 3, 4, 5] and not late.ask_intra_on
    assert (intake.packets, intake.packet_bytes) == (6, 40 + 4 * 30 + 30)


def test_intake_refuses_another_codec_and_keeps_no_trace() -> None:
    intake = KeypointIntake(hello(), IntraRequestTiming(kp_interval=None))
    with pytest.raises(ProtocolError, match="codec"):
        intake.receive(sent(1, codec="q12")[0], 100, now=0.0)
    with pytest.raises(ProtocolError, match="frame 0"):
        intake.receive(Keypoints(0, 0, 0, "delta", b"\x00"), 1, now=0.0)
    assert intake.packets == 0
    broken = KeypointIntake(hello(), IntraRequestTiming(kp_interval=None))
    broken.receive(sent(3)[2], 30, now=0.0)  # waits for 1: asked on ctrl only (no kp channel)
    assert broken.intra_requests.ctrl == 1 and broken.intra_requests.kp == 0


# ------------------------------------------------------------------ the edge's playout
def test_playout_says_where_each_frame_comes_from_and_when_it_is_too_late() -> None:
    skipped = SkippedFrames(observe=1, predict=1)
    playout = Playout(FPS, delay=0.1, max_lag=0.25, skipped=skipped)
    value, jacobian = motion(6)
    kp6 = np.concatenate([value, jacobian.reshape(6, 10, 4)], axis=2).astype(np.float32)
    for i in (0, 4):  # 2 was sent but lost; 1, 3 and 5 were skipped
        skipped.add(i, 1)
        assert playout.put(DecodedSet(i, kp6[i], 100.0 + i / FPS), now=10.0 + i / FPS) \
            is Placed.QUEUED
    clock = playout.clock
    ticks = [playout.tick(i, clock.due(i)) for i in range(5)]
    assert [t.origin for t in ticks] == [FrameOrigin.OBSERVED, FrameOrigin.PREDICTED,
                                         FrameOrigin.LOST, FrameOrigin.PREDICTED,
                                         FrameOrigin.OBSERVED]
    np.testing.assert_allclose(from_kp6(ticks[4].kp6)[0], value[4], atol=1e-6)
    assert ticks[4].capture_time == pytest.approx(100.0 + 4 / FPS)
    assert ticks[2].capture_time == pytest.approx(100.0 + 2 / FPS)  # estimated from set 0's
    assert all(t.draw for t in ticks)
    late = playout.tick(5, clock.due(5) + 0.3)  # more than max_lag behind
    assert not late.draw and late.undrawn is Undrawn.DROPPED and late.lag == pytest.approx(0.3)
    assert playout.put(DecodedSet(3, kp6[3], 0.0), now=11.0) is Placed.REFUSED  # skipped
    assert playout.put(DecodedSet(4, kp6[4], 0.0), now=11.0) is Placed.REFUSED  # a duplicate
    counts = playout.counts
    assert (counts.observed, counts.predicted, counts.lost, counts.dropped) == (2, 3, 1, 1)
    # set 2 comes after all: late, not lost, and handed back to correct the predictor
    assert playout.put(DecodedSet(2, kp6[2], 0.0), now=11.0) is Placed.LATE
    assert (counts.lost, counts.late, counts.ticks) == (0, 1, 6)
    assert playout.put(DecodedSet(2, kp6[2], 0.0), now=11.0) is Placed.REFUSED  # once only


def test_playout_plays_a_set_on_arrival_and_waits_for_one_no_longer_than_its_deadline() -> None:
    skipped = SkippedFrames(observe=1, predict=1)
    playout = Playout(FPS, delay=None, max_lag=0.25, skipped=skipped, max_delay=0.1)
    kp6 = np.zeros((10, 6), np.float32)
    skipped.add(0, 1)
    playout.put(DecodedSet(0, kp6, 100.0), now=10.0)
    clock = playout.clock
    assert playout.due(0) == -np.inf  # in: now
    playout.tick(0, 10.0)
    assert playout.due(1) == pytest.approx(10.0 + 1 / FPS)  # skipped: its fastest arrival
    assert playout.due(2) == pytest.approx(10.0 + 2 / FPS + 0.1)  # before any jitter is known
    for i in range(2, 40, 2):  # sets 0-4 ms behind the fastest path
        skipped.add(i, 1)
        playout.put(DecodedSet(i, kp6, 100.0 + i / FPS), now=10.0 + i / FPS + (i % 5) / 1000)
    assert 0.004 <= clock.delay <= 0.008  # the jitter's high percentile and a margin
    assert playout.due(40) == pytest.approx(clock.earliest(40) + clock.delay)


def test_playout_thins_evenly_when_asked_to() -> None:
    playout = Playout(FPS, delay=0.1, max_lag=0.25, skipped=SkippedFrames(1, 0))
    playout.put(DecodedSet(0, np.zeros((10, 6), np.float32), 100.0), now=10.0)
    ticks = [playout.tick(i, playout.clock.due(i), render_every=2) for i in range(6)]
    assert [t.draw for t in ticks] == [True, False] * 3
    assert {t.undrawn for t in ticks} == {None, Undrawn.THINNED}
    assert playout.counts.thinned == 3 and playout.counts.dropped == 0
