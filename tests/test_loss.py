"""Packet loss: the loss models (training/loss_models.py), transmit() with loss and its
concealment (training/transmission.py), and ``kpvid-bench loss`` (bench/loss.py)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from kpvid.bench.loss import main
from kpvid.models.checkpoint import WEIGHTS_DIR
from kpvid.models.predictors import ConstantVelocity, HoldLast
from kpvid.protocol.schedule import Schedule
from kpvid.receiver.keypoint_intake import IntraRequestTiming
from kpvid.synthetic import write_dataset
from kpvid.training.loss_models import Bernoulli, GilbertElliott, LossModel, make_loss_model
from kpvid.training.transmission import UNCODED, SimulatedChannel, transmit


class LosePackets(LossModel):
    """Loses the packets with the given numbers (0 = the first packet sent)."""

    name = "listed"

    def __init__(self, *packets: int) -> None:
        self.packets = set(packets)
        self.rate = 0.0
        self._next = 0

    def lost(self, packets: int) -> np.ndarray:
        numbers = range(self._next, self._next + packets)
        self._next += packets
        return np.array([n in self.packets for n in numbers], bool)


def lose(*packets: int, delay: float = 0.0) -> SimulatedChannel:
    """A channel that loses the packets with these numbers."""
    return SimulatedChannel(LosePackets(*packets), delay=delay)


def clip(frames: int = 16, num_kp: int = 10) -> np.ndarray:
    rng = np.random.default_rng(2)
    kp6 = np.zeros((frames, num_kp, 6), np.float32)
    steps = np.arange(frames)[:, None, None]
    kp6[..., :2] = rng.uniform(-0.5, 0.5, (1, num_kp, 2)) + 0.01 * steps
    kp6[..., 2:] = [1, 0, 0, 1]
    kp6[..., 2:3] += 0.002 * steps
    return kp6


def bursts(lost: np.ndarray) -> list[int]:
    """Lengths of the runs of True."""
    edges = np.flatnonzero(np.diff(np.concatenate([[0], lost.astype(int), [0]])))
    return (edges[1::2] - edges[::2]).tolist()


# ------------------------------------------------------------------ loss models
def test_bernoulli_loses_its_rate() -> None:
    lost = Bernoulli(0.2, seed=3).lost(20000)
    assert abs(lost.mean() - 0.2) < 0.015
    assert abs(np.mean(bursts(lost)) - 1 / 0.8) < 0.1  # independent: geometric runs
    assert not Bernoulli(0.0).lost(1000).any()


def test_gilbert_elliott_loses_its_rate_in_bursts() -> None:
    model = GilbertElliott(0.1, burst_length=3, seed=5)
    lost = np.concatenate([model.lost(10000), model.lost(10000)])  # one chain across calls
    assert abs(lost.mean() - 0.1) < 0.025
    assert abs(np.mean(bursts(lost)) - 3) < 0.3
    assert not GilbertElliott(0.0, seed=1).lost(1000).any()


@pytest.mark.parametrize("name", ["bernoulli", "gilbert-elliott"])
def test_loss_models_are_deterministic_given_the_seed(name: str) -> None:
    first = make_loss_model(name, 0.3, seed=[7, 1]).lost(500)
    assert (first == make_loss_model(name, 0.3, seed=[7, 1]).lost(500)).all()
    assert (first != make_loss_model(name, 0.3, seed=[7, 2]).lost(500)).any()


def test_loss_model_arguments_are_checked() -> None:
    with pytest.raises(ValueError, match="loss rate"):
        Bernoulli(1.5)
    with pytest.raises(ValueError, match="loss rate"):
        GilbertElliott(0.8, burst_length=3)  # above 3 / 4: not reachable with bursts of 3
    with pytest.raises(ValueError, match="burst_length"):
        GilbertElliott(0.1, burst_length=0.5)
    with pytest.raises(ValueError, match="unknown loss model"):
        make_loss_model("carrier-pigeon", 0.1)


# ------------------------------------------------------------------ transmit with loss
@pytest.mark.parametrize("codec", [UNCODED, "q12", "delta"])
def test_no_loss_is_the_lossless_call(codec: str) -> None:
    kp6 = clip()
    plain = transmit(kp6, Schedule(1, 1), codec, ConstantVelocity)
    for loss in (Bernoulli(0.0, 1), GilbertElliott(0.0, seed=1)):
        sent = transmit(kp6, Schedule(1, 1), codec, ConstantVelocity,
                        channel=SimulatedChannel(loss))
        np.testing.assert_array_equal(sent.kp6, plain.kp6)
        np.testing.assert_array_equal(sent.message_bytes, plain.message_bytes)
        assert not sent.lost.any() and not sent.concealed.any() and sent.intra_requests == 0
    assert not plain.lost.any() and not plain.concealed.any()


def test_lost_frames_are_flagged_and_concealed() -> None:
    kp6 = clip()
    plain = transmit(kp6, Schedule(1, 1), "q12", HoldLast)
    sent = transmit(kp6, Schedule(1, 1), "q12", HoldLast, channel=lose(2, 3))
    assert np.flatnonzero(sent.lost).tolist() == [4, 6]  # packets 2 and 3 carry frames 4, 6
    assert (sent.concealed == sent.lost).all()  # stateless codec: nothing undecodable
    assert sent.message_bytes[4] > 0  # a lost packet was still sent
    for frame in (4, 5, 6, 7):  # hold-last keeps frame 2 up to frame 8
        np.testing.assert_array_equal(sent.kp6[frame], plain.kp6[2])
    np.testing.assert_array_equal(sent.kp6[8:], plain.kp6[8:])
    np.testing.assert_array_equal(sent.kp6[:4], plain.kp6[:4])


def test_delta_loss_waits_for_the_requested_intra() -> None:
    kp6 = clip()
    plain = transmit(kp6, Schedule(1, 0), "delta", HoldLast)
    sent = transmit(kp6, Schedule(1, 0), "delta", HoldLast, channel=lose(3))
    # packet 4 builds on the lost 3: undecodable, the edge asks, packet 5 is intra
    assert np.flatnonzero(sent.lost).tolist() == [3]
    assert np.flatnonzero(sent.concealed).tolist() == [3, 4]
    assert sent.undecodable.tolist() == [i == 4 for i in range(16)]
    assert sent.intra_requests == 1 and sent.intra_payloads == plain.intra_payloads + 1
    np.testing.assert_array_equal(sent.kp6[3], plain.kp6[2])  # held
    np.testing.assert_array_equal(sent.kp6[4], plain.kp6[2])
    np.testing.assert_array_equal(sent.kp6[5:], plain.kp6[5:])  # exact again after the intra
    np.testing.assert_array_equal(sent.kp6[:3], plain.kp6[:3])
    assert sent.payload_bytes[5] > plain.payload_bytes[5]  # the intra costs more


def test_intra_request_delay_and_interval() -> None:
    kp6 = clip()  # 30 fps, every frame sent: a packet every 1/30 s
    plain = transmit(kp6, Schedule(1, 0), "delta", HoldLast)
    # 45 ms each way: the request made at packet 4 reaches the sender after packet 6
    late = transmit(kp6, Schedule(1, 0), "delta", HoldLast,
                    channel=lose(3, delay=0.045))
    assert np.flatnonzero(late.concealed).tolist() == [3, 4, 5, 6]  # packet 7 is intra
    np.testing.assert_array_equal(late.kp6[7:], plain.kp6[7:])
    # the intra (5) is lost too: packet 6 waits and asks again, as soon as the interval allows
    often = IntraRequestTiming(kp_interval=0.05, ctrl_interval=10)
    again = transmit(kp6, Schedule(1, 0), "delta", HoldLast,
                     channel=lose(3, 5), intra_timing=often)
    assert np.flatnonzero(again.concealed).tolist() == [3, 4, 5, 6]
    assert again.intra_requests == 2
    spaced = transmit(kp6, Schedule(1, 0), "delta", HoldLast,
                      channel=lose(3, 5),
                      intra_timing=IntraRequestTiming(kp_interval=0.13, ctrl_interval=10))
    assert np.flatnonzero(spaced.concealed).tolist() == [3, 4, 5, 6, 7, 8]  # asks at 4 and 8
    np.testing.assert_array_equal(spaced.kp6[9:], plain.kp6[9:])
    with pytest.raises(ValueError, match="delay"):
        SimulatedChannel(delay=-0.01)


def test_a_jittery_channel_reorders_and_the_late_sets_are_concealed() -> None:
    kp6 = clip(30)
    plain = transmit(kp6, Schedule(1, 0), "q12", HoldLast)
    # up to 0.3 s of jitter against 0.1 s of playout delay: some sets come after their frame
    jittery = transmit(kp6, Schedule(1, 0), "q12", HoldLast,
                       channel=SimulatedChannel(delay=0.0, jitter=0.3, seed=2))
    assert not jittery.lost.any() and jittery.concealed.any()  # late, not lost
    on_time = ~jittery.concealed
    np.testing.assert_array_equal(jittery.kp6[on_time], plain.kp6[on_time])


def test_the_periodic_intra_also_restarts_the_chain() -> None:
    kp6 = clip()
    plain = transmit(kp6, Schedule(1, 0), "delta", HoldLast, intra_interval=5)
    # packet 4 lost, packet 5 is the periodic intra: nothing waits, nothing is asked
    sent = transmit(kp6, Schedule(1, 0), "delta", HoldLast, intra_interval=5,
                    channel=lose(4))
    assert np.flatnonzero(sent.concealed).tolist() == [4] and sent.intra_requests == 0
    np.testing.assert_array_equal(sent.kp6[5:], plain.kp6[5:])


def test_a_lost_first_packet_shows_the_source_image() -> None:
    kp6 = clip()
    sent = transmit(kp6, Schedule(1, 1), "delta", ConstantVelocity, channel=lose(0))
    np.testing.assert_array_equal(sent.kp6[0], kp6[0])  # the source image's keypoints
    np.testing.assert_array_equal(sent.kp6[1], kp6[0])
    assert sent.concealed[0] and sent.undecodable[2] and not sent.concealed[4]
    source = np.zeros_like(kp6[0])
    other = transmit(kp6, Schedule(1, 1), "q12", HoldLast, channel=lose(0),
                     source_kp6=source)
    np.testing.assert_array_equal(other.kp6[:2], [source, source])


# ------------------------------------------------------------------ the benchmark
def test_loss_benchmark_writes_table_json_and_plot(tmp_path, capsys) -> None:
    data = tmp_path / "data"
    write_dataset("faces", data, videos=3, seed=4, size=64, frames=16, test_fraction=0.6,
                  progress=False)
    out = tmp_path / "loss.json"
    argv = ["--data", str(data), "--rates", "0", "0.3", "--predictors", "hold-last",
            "constant-velocity", "--seed", "3", "--quiet",  # the 64x64 model, for speed
            "--checkpoint", str(WEIGHTS_DIR / "kpvid-heads-64.pth.tar")]
    code = main([*argv, "--json", str(out), "--markdown", str(tmp_path / "loss.md"),
                 "--plots", str(tmp_path)])
    assert code == 0
    results = json.loads(out.read_text())
    assert results["meta"]["videos"] == 2 and results["meta"]["frames"] == 32
    rows = {(r["loss_model"], r["loss_rate"], r["predictor"]): r for r in results["rows"]}
    assert len(rows) == 2 * 2 * 2
    for predictor in ("hold-last", "constant-velocity"):
        clean = rows["bernoulli", 0.0, predictor]
        assert clean == {**rows["gilbert-elliott", 0.0, predictor],
                         "loss_model": "bernoulli"}
        assert clean["packets_lost"] == 0 and clean["frames_concealed"] == 0
        assert clean["position_error_px256_concealed"] is None
    for model in ("bernoulli", "gilbert-elliott"):
        a, b = rows[model, 0.3, "hold-last"], rows[model, 0.3, "constant-velocity"]
        assert a["packets_lost"] == b["packets_lost"]  # the same losses for each predictor
        assert a["frames_concealed"] >= a["packets_lost"] / 2  # 1:1: half the frames sent
    assert (tmp_path / "loss_psnr.png").stat().st_size > 0
    table = (tmp_path / "loss.md").read_text()
    assert "| 30 % |" in table and "hold-last, gilbert-elliott" in table
    assert table in capsys.readouterr().out
    assert main([*argv, "--json", str(tmp_path / "again.json")]) == 0  # deterministic
    again = json.loads((tmp_path / "again.json").read_text())
    assert again["rows"] == results["rows"]


def test_loss_benchmark_rejects_bad_input(tmp_path) -> None:
    assert main(["--data", str(tmp_path / "missing")]) == 2
    assert main(["--data", str(tmp_path), "--rates", "0.8", "--burst-length", "3"]) == 2
    with pytest.raises(SystemExit):
        main(["--data", str(tmp_path), "--rates", "1.5"])
