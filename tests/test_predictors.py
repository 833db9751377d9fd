"""Keypoint predictors: shapes, open-loop behaviour, registry and kp6 conversions."""

from __future__ import annotations

import numpy as np
import pytest

from kpvid.models.predictors import (
    PREDICTORS,
    ConstantVelocity,
    HoldLast,
    Predictor,
    make_predictor,
)
from kpvid.protocol.keypoint_set import from_kp6, to_kp6


def kp_set(k: int = 10, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-1, 1, (k, 6)).astype(np.float32)


def test_kp6_round_trip_and_layout():
    rng = np.random.default_rng(1)
    value = rng.uniform(-1, 1, (10, 2)).astype(np.float32)
    jacobian = rng.normal(size=(10, 2, 2)).astype(np.float32)
    kp6 = to_kp6(value, jacobian)
    assert kp6.shape == (10, 6) and kp6.dtype == np.float32
    np.testing.assert_array_equal(kp6[3], [*value[3], *jacobian[3, 0], *jacobian[3, 1]])
    back_value, back_jacobian = from_kp6(kp6)
    np.testing.assert_array_equal(back_value, value)
    np.testing.assert_array_equal(back_jacobian, jacobian)
    with pytest.raises(ValueError):
        to_kp6(value, jacobian[:5])
    with pytest.raises(ValueError):
        from_kp6(np.zeros((10, 5), np.float32))


def test_registry_and_make_predictor():
    assert dict(PREDICTORS) == {"hold-last": HoldLast, "constant-velocity": ConstantVelocity}
    for name, cls in PREDICTORS.items():
        predictor = make_predictor(name)
        assert isinstance(predictor, cls) and isinstance(predictor, Predictor)
        assert predictor.name == name
    assert make_predictor("hold-last") is not make_predictor("hold-last")
    with pytest.raises(ValueError, match="constant-velocity.*hold-last"):
        make_predictor("vrnn-nope")


@pytest.mark.parametrize("name", sorted(PREDICTORS))
def test_predict_before_observe_raises_and_reset_forgets(name):
    predictor = make_predictor(name)
    with pytest.raises(RuntimeError):
        predictor.predict()
    predictor.observe(kp_set())
    predictor.predict()
    predictor.reset()
    with pytest.raises(RuntimeError):
        predictor.predict()


@pytest.mark.parametrize("name", sorted(PREDICTORS))
def test_outputs_are_float32_copies_and_inputs_are_copied(name):
    predictor = make_predictor(name)
    observed = kp_set(4).astype(np.float64)
    predictor.observe(observed)
    observed[:] = 99  # the predictor keeps its own copy
    out = predictor.predict()
    assert out.shape == (4, 6) and out.dtype == np.float32
    assert np.all(out < 2)
    out[:] = 55  # and hands out copies
    assert np.all(predictor.predict() < 2)
    with pytest.raises(ValueError, match="changed"):
        predictor.observe(kp_set(5))
    with pytest.raises(ValueError):
        predictor.observe(np.zeros((4, 2), np.float32))


def test_hold_last_repeats_latest_set():
    predictor = HoldLast()
    a, b = kp_set(seed=1), kp_set(seed=2)
    predictor.observe(a)
    predictor.observe(b)
    for _ in range(3):
        np.testing.assert_array_equal(predictor.predict(), b)


def test_constant_velocity_extrapolates_linearly_open_loop():
    predictor = ConstantVelocity()
    a = kp_set(seed=3)
    step = np.full_like(a, 0.01)
    predictor.observe(a)
    predictor.observe(a + step)
    for n in range(2, 6):  # its own outputs feed back: a straight line
        np.testing.assert_allclose(predictor.predict(), a + n * step, atol=1e-6)
    predictor.observe(a)  # 5 steps after the last observation: velocity -step / 5
    np.testing.assert_allclose(predictor.predict(), a - step / 5, atol=1e-6)


def test_constant_velocity_knows_the_steps_between_observations():
    """Observing every other frame (the M2 schedule) of a straight line predicts it exactly."""
    predictor = ConstantVelocity()
    a = kp_set(seed=5)
    step = np.full_like(a, 0.01)
    for t in range(0, 12, 2):
        predictor.observe(a + t * step)
        prediction = predictor.predict()
        if t > 0:
            np.testing.assert_allclose(prediction, a + (t + 1) * step, atol=1e-6)


def test_constant_velocity_holds_with_a_single_observation():
    predictor = ConstantVelocity()
    a = kp_set(seed=4)
    predictor.observe(a)
    np.testing.assert_array_equal(predictor.predict(), a)
    np.testing.assert_array_equal(predictor.predict(), a)


@pytest.mark.parametrize("name", ["hold-last", "constant-velocity"])
def test_a_restored_snapshot_predicts_as_the_predictor_did_then(name):
    predictor = make_predictor(name)
    rng = np.random.default_rng(0)
    for _ in range(3):
        predictor.observe(rng.normal(size=(10, 6)).astype(np.float32))
    snapshot = predictor.snapshot()
    first = np.stack([predictor.predict() for _ in range(3)])
    predictor.observe(rng.normal(size=(10, 6)).astype(np.float32))
    predictor.restore(snapshot)
    np.testing.assert_array_equal(np.stack([predictor.predict() for _ in range(3)]), first)
