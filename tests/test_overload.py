"""Graceful overload: the render step follows the synthesis worker's busy share."""

from __future__ import annotations

import pytest

from kpvid.receiver.overload import OverloadOptions, RenderRate


def run(rate: RenderRate, shares: list[float]) -> list[int]:
    """Feed one window per share; the render step after each."""
    now, busy, steps = 0.0, 0.0, []
    rate.update(now, busy)
    for share in shares:
        now += rate.options.window
        busy += share * rate.options.window
        steps.append(rate.update(now, busy))
    return steps


def test_the_render_step_rises_under_load_and_comes_back_when_it_goes() -> None:
    rate = RenderRate(OverloadOptions(high=0.9, low=0.7, window=1.0, max_every=3))
    # overloaded: one step a window, up to max_every; then at every 3rd frame the worker is
    # half busy (every 2nd would make it 0.75, over low: it stays); lighter (0.4 * 3 / 2 = 0.6
    # < 0.7, then 0.3 * 2 = 0.6): back to every frame
    assert run(rate, [0.95, 0.97, 0.99, 0.99, 0.5, 0.4, 0.3, 0.3]) == [2, 3, 3, 3, 3, 2, 1, 1]


def test_a_window_is_judged_only_once_it_is_over() -> None:
    rate = RenderRate(OverloadOptions(window=1.0))
    rate.update(0.0, 0.0)
    assert rate.update(0.5, 0.5) == 1 and rate.share is None  # half a window, all busy
    assert rate.update(1.0, 1.0) == 2 and rate.share == pytest.approx(1.0)


def test_options_are_checked() -> None:
    with pytest.raises(ValueError):
        OverloadOptions(high=0.5, low=0.7)
    with pytest.raises(ValueError):
        OverloadOptions(max_every=0)
