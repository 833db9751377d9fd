"""Learned keypoint predictors (vrnn, rnn, vae): shapes, modes, open-loop training, checkpoints and
the streaming adapter."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from kpvid.models.checkpoint import CheckpointError
from kpvid.models.learned_predictor import (
    NETWORKS,
    LearnedPredictor,
    Normalisation,
    build_network,
    load_predictor,
    read_predictor_checkpoint,
    save_predictor,
)
from kpvid.models.predictors import (
    HoldLast,
    Predictor,
    make_predictor,
    predictor_factory,
    rollout,
    step_predictors,
)
from kpvid.models.sequence_model import gaussian_kl, schedule_mask, standard_normal_kl
from kpvid.models.vrnn import LATENT_LOGVAR_INIT
from kpvid.protocol.keypoint_set import position_error
from kpvid.training.train_predictor import KeypointData, evaluate_network, evaluate_predictor

KINDS = sorted(NETWORKS)
K = 2
D = K * 6


def tiny(kind: str, seed: int = 0, **hparams: object) -> torch.nn.Module:
    torch.manual_seed(seed)
    sizes = {"hidden": 16} if kind == "rnn" else {"hidden": 16, "latent": 4}
    return build_network(kind, input_dim=D, **{**sizes, **hparams})


def randomised(network: torch.nn.Module, seed: int = 1) -> torch.nn.Module:
    """The network with every parameter random (a fresh one starts as hold-last)."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in network.parameters():
            p.normal_(0, 0.3)
    return network


def sinusoids(count: int, length: int, seed: int = 0) -> np.ndarray:
    """Smooth kp6 sequences (count, length, K, 6): each number a sinusoid of its own phase."""
    rng = np.random.default_rng(seed)
    t = np.arange(length)[None, :, None, None]
    freq = rng.uniform(0.25, 0.45, (count, 1, 1, 1))
    phase = rng.uniform(0, 2 * np.pi, (count, 1, K, 6))
    amp = rng.uniform(0.5, 1.0, (count, 1, K, 6))
    return (amp * np.sin(freq * t + phase)).astype(np.float32)


UNIT = Normalisation(np.zeros(6), np.ones(6))


@pytest.mark.parametrize("kind", KINDS)
def test_step_and_loss_shapes_on_a_batch(kind):
    net = tiny(kind)
    state = net.init_state(3)
    assert state.shape == (3, net.state_size())
    x = torch.randn(3, D)
    out, state = net.step(x, state)
    assert torch.equal(out, x) and state.shape == (3, net.state_size())
    out, state = net.step(None, state, sample=True)
    assert out.shape == (3, D) and state.shape == (3, net.state_size())
    seq = torch.randn(3, 7, D)
    mask = torch.from_numpy(np.stack([schedule_mask(s, 7) for s in ("m1", "m2", "m1")]))
    losses = net.sequence_loss(seq, mask, beta=0.5)
    assert set(losses) == {"loss", "nll", "kl", "mse"}
    assert all(torch.isfinite(v) and v.dim() == 0 for v in losses.values())
    losses["loss"].backward()
    assert net.rollout(seq, mask).shape == seq.shape


@pytest.mark.parametrize("kind", KINDS)
def test_batched_step_matches_single_streams(kind):
    net = randomised(tiny(kind)).eval()
    seqs = torch.randn(3, 6, D)
    mask = torch.from_numpy(schedule_mask("m2", 6)).expand(3, -1)
    together = net.rollout(seqs, mask)
    for i in range(3):
        alone = net.rollout(seqs[i:i + 1], mask[i:i + 1])
        torch.testing.assert_close(together[i:i + 1], alone, rtol=1e-5, atol=1e-6)


def test_kl_helpers():
    mu, logvar = torch.randn(4, 3), torch.randn(4, 3)
    torch.testing.assert_close(gaussian_kl(mu, logvar, torch.zeros(4, 3), torch.zeros(4, 3)),
                               standard_normal_kl(mu, logvar))
    assert torch.allclose(gaussian_kl(mu, logvar, mu, logvar), torch.zeros(4))
    assert bool((gaussian_kl(mu, logvar, mu + 1, logvar) > 0).all())


def step_terms(net, x, mask):
    """Per-step training terms and states of ``sequence_loss``'s loop (fixed noise)."""
    torch.manual_seed(0)
    state = net.init_state(x.shape[0])
    terms, states = [], []
    for t in range(x.shape[1]):
        step, state = net.step_loss(x[:, t], mask[:, t], state)
        terms.append(step)
        states.append(state)
    return terms, states


@pytest.mark.parametrize("kind", KINDS)
def test_training_rollout_never_reads_ground_truth_of_predicted_steps(kind):
    net = randomised(tiny(kind))
    x = torch.randn(2, 12, D)
    # row 0 follows M1, row 1 M2: both the per-row and the whole-batch code paths run
    mask = torch.from_numpy(np.stack([schedule_mask("m1", 12), schedule_mask("m2", 12)]))
    hidden = 7  # a predicted frame of both rows
    assert not mask[:, hidden].any()
    changed = x.clone()
    changed[:, hidden] += 100.0
    terms, states = step_terms(net, x, mask)
    terms2, states2 = step_terms(net, changed, mask)
    for t in range(12):
        torch.testing.assert_close(states[t], states2[t])  # the rollout never saw the change
        if t != hidden:
            for key in terms[t]:
                torch.testing.assert_close(terms[t][key], terms2[t][key])
    # ...which reaches the loss only as that frame's target
    assert bool((terms2[hidden]["sq_err"] > terms[hidden]["sq_err"] + 1000).all())
    # streaming rollouts (deterministic) read only observed frames: identical outputs
    torch.testing.assert_close(net.rollout(x, mask), net.rollout(changed, mask))


@pytest.mark.parametrize("kind", KINDS)
def test_untrained_network_holds_the_last_set(kind):
    predictor = LearnedPredictor(tiny(kind), Normalisation.fit(sinusoids(4, 8)))
    kp = sinusoids(1, 3)[0]
    for kp_t in kp:
        predictor.observe(kp_t)
    for _ in range(3):
        np.testing.assert_allclose(predictor.predict(), kp[-1], atol=1e-5)


def test_a_fresh_vrnn_draws_narrow_latents():
    """Its prior and posterior start at a standard deviation near exp(LATENT_LOGVAR_INIT / 2),
    not 1: unit-variance latent noise drowned the recurrence from the first step, and every
    VRNN trained on real keypoints collapsed to holding the last set."""
    net = tiny("vrnn", hidden=32)
    h = torch.randn(64, 32)
    x = torch.randn(64, D)
    with torch.no_grad():
        logvars = (net.prior(h).chunk(2, dim=-1)[1],
                   net.encoder(torch.cat([net.phi_x(x), h], dim=-1)).chunk(2, dim=-1)[1])
    for logvar in logvars:
        std = (0.5 * logvar).exp()
        assert float(std.max()) < 2 * math.exp(LATENT_LOGVAR_INIT / 2) < 0.3


@pytest.mark.parametrize("kind", KINDS)
def test_streaming_adapter_through_the_predictor_interface(kind):
    norm = Normalisation.fit(sinusoids(8, 10) * 3 + 1)
    predictor = LearnedPredictor(randomised(tiny(kind)), norm)
    assert isinstance(predictor, Predictor) and predictor.name == kind
    with pytest.raises(RuntimeError):
        predictor.predict()
    seq = sinusoids(1, 8, seed=5)[0] * 3 + 1
    first = run_stream(predictor, seq)
    assert first.shape == (3, K, 6) and first.dtype == np.float32
    predictor.reset()
    with pytest.raises(RuntimeError):
        predictor.predict()
    np.testing.assert_array_equal(run_stream(predictor, seq), first)
    # the adapter normalises: the same network on raw numbers predicts the normalised rollout
    x = torch.from_numpy(norm.apply(seq))[None]
    mask = torch.from_numpy(np.arange(8) < 5)[None]
    expected = norm.invert(predictor.network.rollout(x, mask)[0, 5:].numpy())
    np.testing.assert_allclose(first, expected, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match=f"expects {K} keypoints.*got 3"):
        predictor.observe(np.zeros((3, 6), np.float32))


def run_stream(predictor: Predictor, seq: np.ndarray, observed: int = 5) -> np.ndarray:
    for kp in seq[:observed]:
        predictor.observe(kp)
    return np.stack([predictor.predict() for _ in range(len(seq) - observed)])


@pytest.mark.parametrize("kind", ["vrnn", "vae"])
def test_deterministic_and_sampled_modes(kind):
    net = randomised(tiny(kind)).eval()
    seq = sinusoids(1, 8, seed=2)[0]
    det = [run_stream(LearnedPredictor(net, UNIT), seq) for _ in range(2)]
    np.testing.assert_array_equal(det[0], det[1])
    sampled = [run_stream(LearnedPredictor(net, UNIT, samples=4, seed=s), seq) for s in (3, 3, 4)]
    np.testing.assert_array_equal(sampled[0], sampled[1])  # seeded
    assert not np.allclose(sampled[0], sampled[2])  # ...and random
    assert not np.allclose(sampled[0], det[0])
    # sampled mode is the mean of 4 particles, each feeding back its own sample
    predictor = LearnedPredictor(net, UNIT, samples=4, seed=3)
    assert predictor.samples == 4
    out = run_stream(predictor, seq)
    assert predictor.state.shape == (4, net.state_size())
    generator = torch.Generator().manual_seed(3)
    state = net.init_state(4)
    with torch.no_grad():
        for kp in seq[:5]:
            _, state = net.step(torch.from_numpy(UNIT.apply(kp)).expand(4, -1), state, True,
                                generator)
        for t in range(3):
            particles, state = net.step(None, state, True, generator)
            assert particles.std(dim=0).max() > 0
            np.testing.assert_allclose(out[t], UNIT.invert(particles.mean(0).numpy()),
                                       rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("samples", [1, 4])
def test_a_restored_snapshot_predicts_as_the_predictor_did_then(samples):
    net = randomised(tiny("vrnn")).eval()
    seq = sinusoids(1, 8, seed=2)[0]
    predictor = LearnedPredictor(net, UNIT, samples=samples, seed=3)
    for kp in seq[:4]:
        predictor.observe(kp)
    snapshot = predictor.snapshot()
    first = [predictor.predict() for _ in range(3)]
    predictor.observe(seq[5])  # moves on...
    predictor.restore(snapshot)  # ...and back: the same rollout, random draws included
    np.testing.assert_array_equal(np.stack([predictor.predict() for _ in range(3)]),
                                  np.stack(first))


def test_rnn_has_no_sampled_mode():
    predictor = LearnedPredictor(tiny("rnn"), UNIT, samples=8)
    assert predictor.samples == 1


@pytest.mark.parametrize("kind", ["rnn", "vrnn"])
def test_training_on_smooth_sequences_beats_hold_last(kind):
    torch.set_num_threads(1)
    length = 12
    data = sinusoids(96, length)
    norm = Normalisation.fit(data)
    x = torch.from_numpy(norm.apply(data))
    net = tiny(kind, hidden=32)
    m2 = torch.from_numpy(schedule_mask("m2", length)).expand(len(x), -1)
    with torch.no_grad():
        before = float(net.sequence_loss(x, m2)["mse"])
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-2)
    rng = np.random.default_rng(0)
    for step in range(80):
        mask = torch.from_numpy(schedule_mask("mixed", length, rng)).expand(32, -1)
        batch = x[torch.from_numpy(rng.integers(len(x), size=32))]
        losses = net.sequence_loss(batch, mask, beta=min(1.0, step / 50))
        optimizer.zero_grad()
        losses["loss"].backward()
        optimizer.step()
    with torch.no_grad():
        assert float(net.sequence_loss(x, m2)["mse"]) < 0.8 * before
    held_out = KeypointData(sinusoids(32, length, seed=9), np.full(32, length),
                            np.arange(32).astype(str), None, None)
    for schedule in ("m1", "m2"):
        learned = evaluate_network(net, norm, held_out, schedule).kp_mse
        hold = evaluate_predictor(HoldLast, held_out, schedule).kp_mse
        assert learned < 0.85 * hold, (schedule, learned, hold)


@pytest.mark.parametrize("kind", KINDS)
def test_checkpoint_round_trip(tmp_path, kind):
    net = randomised(tiny(kind)).eval()
    norm = Normalisation.fit(sinusoids(4, 8) + 2)
    path = save_predictor(tmp_path / "p.pt", net, norm, {"seed": 3, "model_id": "faces"})
    checkpoint = read_predictor_checkpoint(path, num_kp=K, model_id="faces")
    assert checkpoint.kind == kind and checkpoint.num_kp == K and checkpoint.model_id == "faces"
    assert checkpoint.meta["seed"] == 3
    np.testing.assert_array_equal(checkpoint.norm.mean, norm.mean)
    seq = sinusoids(1, 8, seed=4)[0] + 2
    expected = run_stream(LearnedPredictor(net, norm), seq)
    np.testing.assert_array_equal(run_stream(load_predictor(path), seq), expected)
    np.testing.assert_array_equal(run_stream(make_predictor(kind, path, num_kp=K), seq), expected)


def test_default_sized_checkpoints_are_small(tmp_path):
    for kind in KINDS:
        net = build_network(kind, input_dim=60)
        path = save_predictor(tmp_path / f"{kind}.pt", net, UNIT, model_id="m")
        assert path.stat().st_size < 5e6


def test_checkpoint_mismatches_name_both_values(tmp_path):
    path = save_predictor(tmp_path / "p.pt", tiny("vrnn"), UNIT, model_id="kpvid-faces-64")
    with pytest.raises(CheckpointError, match=r"2 keypoints.*has 10"):
        load_predictor(path, num_kp=10)
    with pytest.raises(CheckpointError, match=r"'kpvid-faces-64'.*'vox-256'"):
        load_predictor(path, model_id="vox-256")
    assert load_predictor(path, num_kp=2, model_id="kpvid-faces-64").num_kp == 2
    with pytest.raises(ValueError, match="holds a 'vrnn' predictor, not 'rnn'"):
        make_predictor("rnn", path)
    torch.save({"kp_detector": {}}, tmp_path / "fomm.pt")
    with pytest.raises(CheckpointError, match="not a kpvid predictor"):
        load_predictor(tmp_path / "fomm.pt")
    with pytest.raises(CheckpointError, match="not found"):
        load_predictor(tmp_path / "missing.pt")


def test_normalisation_checks_and_round_trip():
    kp = sinusoids(3, 5)
    norm = Normalisation.fit(kp)
    assert norm.apply(kp).shape == (3, 5, D)
    np.testing.assert_allclose(norm.invert(norm.apply(kp)), kp, atol=1e-5)
    assert Normalisation.fit(np.ones((4, 2, 6))).std.min() > 0  # constant columns
    with pytest.raises(ValueError):
        Normalisation(np.zeros(5), np.ones(5))
    with pytest.raises(ValueError):
        Normalisation(np.zeros(6), np.zeros(6))


@pytest.mark.parametrize("kind", KINDS)
def test_step_predictors_batches_streams_like_one_at_a_time(kind):
    """Streams on different schedules, stepped together, get exactly the sets each would get
    alone; a hold-last stream in the same call is stepped by its own class."""
    net = randomised(tiny(kind)).eval()
    norm = Normalisation.fit(sinusoids(4, 8) + 1)
    seqs = sinusoids(3, 12, seed=5) + 1
    masks = [schedule_mask("m1", 12), schedule_mask("m2", 12), np.arange(12) % 3 == 0]
    expected = [rollout(LearnedPredictor(net, norm), seq, mask) for seq, mask in zip(seqs, masks)]
    predictors: list[Predictor] = [LearnedPredictor(net, norm) for _ in seqs] + [HoldLast()]
    got = []
    for t in range(12):
        sets = [seq[t] if mask[t] else None for seq, mask in zip(seqs, masks)] + [seqs[0][0]]
        got.append(step_predictors(predictors, sets))
    for i in range(3):
        np.testing.assert_allclose(np.stack([frame[i] for frame in got]), expected[i],
                                   atol=1e-5)
    np.testing.assert_array_equal(got[-1][3], seqs[0][0])
    fresh = [LearnedPredictor(net, norm), LearnedPredictor(net, norm)]
    with pytest.raises(RuntimeError, match="before any observe"):
        step_predictors(fresh, [seqs[0][0], None])
    with pytest.raises(ValueError, match="expects 2 keypoints"):
        step_predictors(fresh, [np.zeros((3, 6), np.float32), None])


def _moving_then_still(frames: int = 12) -> np.ndarray:
    """Sets that move 0.05 units a frame for ``frames`` frames, then stop."""
    base = np.random.default_rng(5).normal(0, 0.2, (10, 6)).astype(np.float32)
    sets = np.repeat(base[None], frames + 8, 0)
    sets[:frames, :, 0] += 0.05 * np.arange(frames, dtype=np.float32)[:, None]
    sets[frames:, :, 0] += 0.05 * (frames - 1)
    return sets


# a VRNN that carries a motion on into a gap, as the rewind is for: the cartoon model's (the
# seed-0 VRNN shipped for kpvid-heads-64 collapsed to holding the last set; its MANIFEST.md)
DRIFTING = "kpvid-faces-64"


def test_a_gap_the_forecast_got_wrong_is_replayed_as_a_straight_line():
    sets = _moving_then_still()
    vrnn = predictor_factory("vrnn", model_id=DRIFTING)
    predictor, reference = vrnn(), vrnn()
    unguarded = predictor_factory("vrnn", model_id=DRIFTING, rewind=False)()
    for kp6 in sets[:12]:  # a steady drift: the state learns the motion
        for p in (predictor, reference, unguarded):
            p.observe(kp6)
    for _ in range(5):  # the head stops while the edge predicts: the predictor drifts on
        predictor.predict()
        unguarded.predict()
    arrived = sets[17] + np.float32(0.005)
    last = sets[11]
    assert position_error(predictor.forecast(), arrived) > 10 * position_error(last, arrived)
    predictor.observe(arrived)  # far from the forecast, close to the last set: rewind
    unguarded.observe(arrived)
    assert predictor.rewinds == 1 and unguarded.rewinds == 0
    # as if the gap had been observed on the straight line from the last set to this one
    for k in range(1, 6):
        reference.observe(last + (arrived - last) * np.float32(k / 6))
    reference.observe(arrived)
    np.testing.assert_allclose(predictor.predict(), reference.predict(), atol=1e-5)


def test_rewinds_are_the_same_stepped_alone_or_batched():
    sets = _moving_then_still()
    vrnn = predictor_factory("vrnn", model_id=DRIFTING)  # one network: one call for both
    alone, batched, other = make_predictor("vrnn", model_id=DRIFTING), vrnn(), vrnn()
    plan = [True] * 12 + [False] * 5 + [True, False, True]
    for i, observed in enumerate(plan):
        kp6 = sets[i] if observed else None
        expected = (alone.observe(kp6) or kp6) if observed else alone.predict()
        got = step_predictors([batched, other], [kp6, sets[i]])[0]
        np.testing.assert_allclose(got, expected, atol=1e-5)
    assert alone.rewinds == batched.rewinds >= 1 and other.rewinds == 0
