"""Adapting N: the predictors' forecasts, the edge's prediction error, the sender's controller
(motion and feedback), the edge telling skipped frames from lost ones by the keypoints'
``skip_after``, and a real sender adapting against a real edge."""

from __future__ import annotations

import asyncio
import json

import numpy as np
import pytest

from kpvid.models.predictors import forecast_predictors, make_predictor, predictor_factory
from kpvid.protocol import Bye, Feedback, encode_message
from kpvid.protocol.keypoint_set import PX_PER_UNIT
from kpvid.protocol.schedule import Schedule, ScheduleTimeline
from kpvid.receiver.prediction_error import PredictionErrorWindow
from kpvid.receiver.skipped_frames import SkippedFrames
from kpvid.sender.adaptation import AdaptationOptions, ScheduleController
from kpvid.sender.client import SenderOptions, run_sender
from kpvid.sender.keypoints import KeypointExtractor
from kpvid.sender.sources import SyntheticSource
from kpvid.training.transmission import transmit
from tests.edge_harness import (
    EDGE_TEST_CHECKPOINT,
    TOKEN,
    RawSender,
    detect,
    f16_keypoints,
    running_edge,
    synthetic_clip,
    wait_for,
)


@pytest.mark.parametrize("name", ["hold-last", "constant-velocity", "vrnn"])
def test_a_forecast_is_the_next_prediction_and_changes_nothing(name):
    rng = np.random.default_rng(0)
    sets = rng.normal(0, 0.3, (4, 10, 6)).astype(np.float32)
    predictor = make_predictor(name)
    with pytest.raises(RuntimeError):
        predictor.forecast()
    for kp6 in sets[:3]:
        predictor.observe(kp6)
    first, again = predictor.forecast(), predictor.forecast()
    np.testing.assert_allclose(first, again)
    np.testing.assert_allclose(predictor.predict(), first, atol=1e-6)
    np.testing.assert_allclose(predictor.forecast(), predictor.predict(), atol=1e-6)


def test_forecasts_of_many_streams_are_batched_and_match_each_alone():
    rng = np.random.default_rng(1)
    vrnn = predictor_factory("vrnn")  # one network: its predictors forecast in one call
    predictors = [vrnn(), make_predictor("hold-last"), vrnn()]
    for predictor in predictors:
        for kp6 in rng.normal(0, 0.3, (3, 10, 6)).astype(np.float32):
            predictor.observe(kp6)
    alone = [predictor.forecast() for predictor in predictors]
    together = forecast_predictors(predictors)
    for a, b in zip(alone, together, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5)
    # nothing advanced: the next predictions are still the forecasts
    for predictor, forecast in zip(predictors, alone):
        np.testing.assert_allclose(predictor.predict(), forecast, atol=1e-5)


def test_the_error_window_prefers_sets_that_end_a_gap():
    window = PredictionErrorWindow()
    zero, one = np.zeros((2, 6), np.float32), np.ones((2, 6), np.float32)
    assert window.take() is None
    window.add(zero, zero)                   # one-step, error 0
    assert window.take() == 0.0
    window.add(zero, zero)
    window.gap()
    window.add(zero, one)                    # ends a gap: distance sqrt(2)
    assert window.take() == pytest.approx(np.sqrt(2))
    assert window.take() is None             # a new interval


def controller(predict: int = 1, **options: float) -> ScheduleController:
    made = ScheduleController(Schedule(1, predict), AdaptationOptions(**options))
    made.on_feedback(0, 0, None)  # the first feedback only sets the counters
    assert made.cap == made.options.max_predict
    return made


def px(value: float) -> float:
    return value / PX_PER_UNIT


def positions(shift_px: float = 0.0) -> np.ndarray:
    """Ten keypoints, all moved ``shift_px`` px (at 256) to the right."""
    base = np.linspace(-0.5, 0.5, 20).reshape(10, 2)
    return base + np.array([px(shift_px), 0.0])


def test_still_keypoints_let_n_climb_a_little_at_each_group():
    c = controller(pace=3.0, max_predict=5, max_increase=2)
    assert c.on_group_start(0, positions()) is None  # no speed yet: N stays
    assert c.on_group_start(2, positions()) == Schedule(1, 3)  # still: +2 at most
    assert c.on_group_start(6, positions()) == Schedule(1, 5)
    assert c.on_group_start(12, positions()) is None  # at max_predict


def test_fast_motion_cuts_n_at_once_and_a_pause_is_believed_slowly():
    c = controller(predict=5, pace=3.0, speed_decay=0.5)
    c.on_group_start(0, positions())
    # 9 px in 6 frames: 1.5 px per frame, groups of 3 / sqrt(1.5) = 2.4 frames: N = 1
    assert c.on_group_start(6, positions(9.0)) == Schedule(1, 1)
    assert c.speed == pytest.approx(1.5)
    # 4 px per frame: groups of 1.5 frames, N = 1 (rounded) -> unchanged; 9 px per frame: N = 0
    assert c.on_group_start(8, positions(17.0)) is None
    assert c.on_group_start(9, positions(26.0)) == Schedule(1, 0)
    # the head stops: the remembered speed halves per frame instead of dropping to 0
    c.on_group_start(10, positions(26.0))
    assert c.speed == pytest.approx(4.5)
    assert c.schedule.predict == 0  # 3 / sqrt(4.5) = 1.4 frames


def test_the_edge_feedback_caps_n_on_loss_or_poor_prediction():
    c = controller(predict=4, pace=100.0, max_predict=6, loss_high=0.1, max_error_ratio=1.5)
    c.on_feedback(8, 2, None)  # 20 % of the sets lost: at most one below the N in use
    assert c.cap == 3
    assert c.on_group_start(0, positions()) == Schedule(1, 3)
    # 2 px since the last set: what holding it would have erred at this set
    assert c.on_group_start(4, positions(2.0)) is None
    c.on_feedback(16, 2, px(4.0))  # no loss, but the edge erred 4 px > 1.5 x 2 px
    assert c.cap == 2
    assert c.on_group_start(8, positions(4.0)) == Schedule(1, 2)  # slow motion, yet capped
    c.on_feedback(26, 2, px(2.5))  # within 1.5 x holding's 2 px: the cap rises by one
    assert c.cap == 3
    assert c.on_group_start(11, positions(4.0)) == Schedule(1, 3)
    c.on_feedback(36, 2, px(0.5))  # the head stood still: holding would have erred 0 px
    assert c.cap == 2
    c.on_feedback(3, 0, px(9.0))  # counters went back: a new edge, nothing to judge
    assert c.cap == 2
    c = controller(predict=0, pace=0.1)  # every frame sent: no gap to compare the error with
    c.on_group_start(0, positions())
    c.on_group_start(1, positions(50.0))
    c.on_feedback(30, 0, px(9.0))
    assert c.cap == c.options.max_predict


def test_options_are_checked():
    for bad in ({"pace": 0}, {"max_error_ratio": -1}, {"min_predict": 3, "max_predict": 2},
                {"max_increase": 0}, {"speed_decay": 1.0}, {"loss_high": 0}):
        with pytest.raises(ValueError):
            AdaptationOptions(**bad)


def test_a_timeline_gives_each_frame_its_schedule():
    timeline = ScheduleTimeline(Schedule(1, 1), keep=3)
    timeline.add(Schedule(1, 3, start=6))
    assert [timeline.at(i).is_observed(i) for i in range(4, 14)] == [
        True, False, True, False, False, False, True, False, False, False]
    timeline.add(Schedule(2, 0, start=8))  # replaces what started later, keeps what came before
    assert timeline.at(7).predict == 3 and timeline.at(8).predict == 0
    for start in (20, 30, 40):
        timeline.add(Schedule(1, 2, start=start))
    assert timeline.at(45).start == 40 and timeline.at(0).start == 20  # only 3 kept


def test_each_set_says_how_many_frames_follow_without_one():
    schedule = Schedule(2, 3)
    assert [schedule.skip_after(i) for i in (0, 1, 5, 6)] == [0, 3, 0, 3]
    assert Schedule(1, 0).skip_after(7) == 0


def test_the_edge_tells_skipped_frames_from_lost_ones_by_skip_after():
    frames = SkippedFrames(observe=1, predict=1)  # the hello's 1:1 until a set says more
    assert [frames.skipped(i) for i in range(4)] == [False, True, False, True]
    frames.add(2, 3)  # frames 3-5 skipped, 6 sent
    assert [frames.skipped(i) for i in range(3, 11)] == [True] * 3 + [False] + [True] * 3 + [
        False]  # 6 lost: the edge assumes 1:3 went on
    assert frames.predict == 3
    frames.add(1, 1)  # an older set arriving late changes nothing after the newer one
    assert frames.skipped(4) and frames.predict == 3
    runs = SkippedFrames(observe=2, predict=1)
    runs.add(10, 0)  # inside a run: says nothing about the gap
    runs.add(11, 2)
    assert [runs.skipped(i) for i in range(12, 16)] == [True, True, False, False]


def test_transmit_follows_the_controller():
    still = np.repeat(np.random.default_rng(1).normal(0, 0.3, (1, 10, 6)), 240, 0)
    still = still.astype(np.float32)
    sent = transmit(still, Schedule(1, 1), "delta", lambda: make_predictor("hold-last"),
                    adapt=AdaptationOptions(max_predict=4))
    assert sent.predict is not None
    assert sent.predict[0] == 1 and sent.predict[-1] == 4  # nothing moves: N climbs to the top
    # the schedule changes at group starts: a sent frame begins every group
    for i in np.flatnonzero(np.diff(sent.predict)) + 1:
        assert sent.observed[i]
    assert sent.observed.sum() < 240 / 2
    assert not sent.concealed.any()


def test_the_edge_counts_frames_an_adapted_schedule_skips_as_predicted(tmp_path):
    clip = synthetic_clip(60)
    values, jacobians = detect(clip)
    # frames 0-29 at 1:1, then 1:3 from frame 30
    sent = [i for i in range(30) if i % 2 == 0] + [i for i in range(30, 60) if i % 4 == 2]

    async def scenario():
        async with running_edge(tmp_path) as edge:
            sender = RawSender(edge)
            await sender.connect()
            await sender.start_stream("adapting", clip[0])
            for i in sent:  # the sets from frame 30 on say 3 frames follow without one
                sender.kp.send(f16_keypoints(i, values[i], jacobians[i], 3 if i >= 30 else 1))
                await asyncio.sleep(1 / 15)
            sender.ctrl.send(encode_message(Bye("done", last_frame_index=59)))
            await wait_for(lambda: len(edge.edge.ended) == 1, 15)
            feedback = [m for m in sender.received if isinstance(m, Feedback)]
            await sender.close()
            return edge.edge.ended[0].to_json(), feedback

    final, feedback = asyncio.run(scenario())
    assert final["frames"]["lost"] == 0, final
    assert final["frames"]["observed"] == len(sent)
    assert (final["observe"], final["predict"]) == (1, 3)
    errors = [f.prediction_error for f in feedback if f.prediction_error is not None]
    assert errors and all(0 <= e < 0.5 for e in errors)  # keypoint units: a real measure


@pytest.mark.parametrize("start, pace, max_error_ratio, moves", [
    (1, 500.0, 1000.0, "up"),      # any motion is slow for that pace
    (3, 0.001, 1000.0, "down"),    # any motion is fast
    (1, 500.0, 0.001, "capped"),   # the edge's prediction error is always too high
])
def test_a_real_sender_adapts_to_motion_and_the_edge_feedback(tmp_path, start, pace,
                                                               max_error_ratio, moves):
    frames = 150

    async def scenario():
        async with running_edge(tmp_path, max_lag=5.0) as edge:
            port = int(edge.url.rsplit(":", 1)[1])
            options = SenderOptions(
                host="localhost", port=port, token=TOKEN, ca_file=str(edge.cert),
                stream="adaptive", predict=start, max_frames=frames,
                adapt=AdaptationOptions(pace=pace, max_predict=5,
                                        max_error_ratio=max_error_ratio))
            source = SyntheticSource("faces", seed=3, size=64, fps=30.0, length=frames)
            extractor = KeypointExtractor.from_checkpoint(EDGE_TEST_CHECKPOINT)
            code = await run_sender(source, extractor, options)
            await wait_for(lambda: len(edge.edge.ended) == 1, 15)
            return code, edge.edge.ended[0].to_json()

    code, final = asyncio.run(scenario())
    assert code == 0
    counts = final["frames"]
    assert counts["observed"] + counts["predicted"] + counts["lost"] == frames, counts
    if moves == "down":  # every frame sent in the end (on a loaded machine some come late)
        assert final["predict"] == 0, final
        return
    assert counts["lost"] == 0, counts  # each set said how many frames the sender skipped
    if moves == "up":  # N grows past its start
        assert final["predict"] > start and counts["predicted"] > counts["observed"], final
    else:  # N climbs to 5 at once, then each feedback after the first caps it one lower
        assert final["predict"] < 5 and counts["predicted"] > counts["observed"], final


def test_the_bench_reports_every_schedule_and_the_gain(tmp_path, capsys, monkeypatch):
    from kpvid.bench import adapt
    from kpvid.bench.adapt import main

    asked = []  # the predictor is the one made for the bench's model, not the default model's

    def factory(name, *args, **kwargs):
        asked.append((name, kwargs.get("model_id")))
        return predictor_factory(name, *args, **kwargs)

    monkeypatch.setattr(adapt, "predictor_factory", factory)
    code = main(["--clips", "1", "--frames", "45", "--fixed", "0", "2", "--paces", "3",
                 "--activities", "varying", "--json", str(tmp_path / "a.json"), "--quiet",
                 "--threads", "1", "--checkpoint", str(EDGE_TEST_CHECKPOINT)])  # 64x64: quick
    assert code == 0
    rows = json.loads((tmp_path / "a.json").read_text())["rows"]
    assert [r["schedule"] for r in rows] == ["fixed 1:0", "fixed 1:2", "adaptive pace 3"]
    fixed0, fixed2, adaptive = rows
    assert fixed0["sent_share"] == 1 and fixed2["sent_share"] == pytest.approx(15 / 45)
    assert fixed0["kbps"] > fixed2["kbps"] and fixed0["psnr"] > fixed2["psnr"]
    assert fixed2["kbps"] <= adaptive["kbps"] <= fixed0["kbps"]  # starts at 1:1, between
    assert adaptive["gain_db"] is not None
    assert fixed0["changes_per_s"] == 0 and adaptive["changes_per_s"] > 0
    assert 0 <= adaptive["clips_above"] <= adaptive["clips_compared"] <= 1
    assert "PSNR above the fixed curve" in capsys.readouterr().out
    assert asked == [("vrnn", "kpvid-heads-64")]
