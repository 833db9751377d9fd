"""Playout clock and jitter buffer, driven with fake arrival times."""

from __future__ import annotations

import pytest

from kpvid.receiver.jitter import JitterBuffer, PlayoutClock

FPS = 25.0  # 40 ms per frame: exact in binary-friendly arithmetic for the checks below


def test_clock_before_first_packet():
    clock = PlayoutClock(FPS, 0.1)
    assert not clock.started and clock.first_index is None
    with pytest.raises(RuntimeError):
        clock.due(0)
    with pytest.raises(RuntimeError):
        clock.lock()
    with pytest.raises(ValueError):
        PlayoutClock(0, 0.1)
    with pytest.raises(ValueError):
        PlayoutClock(FPS, -1)


def test_clock_anchors_on_first_packet():
    clock = PlayoutClock(FPS, 0.1)
    clock.on_packet(100, 50.0)
    assert clock.started and clock.first_index == 100
    assert clock.due(100) == pytest.approx(50.1)
    assert clock.due(110) == pytest.approx(50.5)
    assert clock.due(99) == pytest.approx(50.06)


def test_delayed_first_packet_does_not_add_latency():
    clock = PlayoutClock(FPS, 0.1)
    clock.on_packet(0, 10.03)  # 30 ms late
    clock.on_packet(1, 10.04)  # on time: expected 10.07, so the anchor moves to 10.0
    assert clock.due(0) == pytest.approx(10.1)
    clock.on_packet(2, 10.095)  # later than expected: no change
    assert clock.due(0) == pytest.approx(10.1)
    assert not clock.locked


def test_anchor_only_slews_once_locked():
    clock = PlayoutClock(FPS, 0.1)  # FPS 25: a frame period is 40 ms, slew 5% of it: 2 ms
    clock.on_packet(0, 10.03)
    clock.lock()
    clock.on_packet(1, 10.04)  # 30 ms earlier than the anchor predicts: moves 2 ms only
    assert clock.due(0) == pytest.approx(10.128)
    for i in range(2, 40):  # packets keep arriving 30 ms early: the excess is gone in 15
        clock.on_packet(i, 10.0 + i / FPS)
    assert clock.due(0) == pytest.approx(10.1)


def test_clock_locks_when_first_frame_due_time_passes():
    clock = PlayoutClock(FPS, 0.1)
    clock.on_packet(5, 10.0)
    clock.on_packet(6, 10.1)  # arrives at due(5): first frame played by now -> locked
    assert clock.locked
    clock.on_packet(9, 10.11)  # would move the anchor to 9.95: locked, it slews 2 ms
    assert clock.due(5) == pytest.approx(10.098)


def test_reordered_older_packet_never_moves_anchor_later():
    clock = PlayoutClock(FPS, 0.1)
    clock.on_packet(10, 10.0)
    clock.on_packet(8, 10.01)  # from before the first packet, arriving after it
    assert clock.first_index == 10
    assert clock.due(10) == pytest.approx(10.1)


def test_buffer_reorders_and_takes():
    buffer: JitterBuffer[str] = JitterBuffer(capacity=8)
    assert buffer.put(2, "c") and buffer.put(0, "a") and buffer.put(1, "b")
    assert len(buffer) == 3
    assert buffer.take(0) == "a"
    assert buffer.take(1) == "b"
    assert buffer.take(2) == "c"
    assert buffer.take(3) is None
    assert len(buffer) == 0
    assert buffer.last_taken == 3


def test_buffer_counts_duplicates_late_and_too_far():
    buffer: JitterBuffer[int] = JitterBuffer(capacity=4)
    assert buffer.put(10, 10)
    assert not buffer.put(10, 10)
    assert buffer.duplicates == 1
    assert buffer.take(10) == 10
    assert not buffer.put(10, 10) and not buffer.put(7, 7)  # already played
    assert buffer.late == 2
    assert buffer.put(14, 14)  # last_taken + capacity: the edge of the window
    assert not buffer.put(15, 15)
    assert buffer.too_far == 1
    assert (buffer.late, buffer.duplicates, buffer.too_far) == (2, 1, 1)


def test_buffer_take_discards_older_entries():
    buffer: JitterBuffer[int] = JitterBuffer()
    for i in (1, 2, 3, 5):
        buffer.put(i, i)
    assert buffer.take(4) is None  # lost: 1..3 are discarded with it
    assert len(buffer) == 1
    assert buffer.take(5) == 5
    assert not buffer.put(2, 2) and buffer.late == 1


def test_buffer_window_before_first_take_is_bounded():
    buffer: JitterBuffer[int] = JitterBuffer(capacity=4)
    assert buffer.put(100, 0) and buffer.put(103, 0)
    assert not buffer.put(104, 0)  # span 100..104 would exceed 4
    assert not buffer.put(99, 0)
    assert buffer.put(101, 0)
    assert buffer.too_far == 2 and len(buffer) == 3
    with pytest.raises(ValueError):
        JitterBuffer(capacity=0)


def test_buffer_memory_stays_bounded_under_a_flood():
    buffer: JitterBuffer[int] = JitterBuffer(capacity=16)
    for i in range(1000):
        buffer.put(i * 7 % 1000, i)
        if i % 10 == 0:
            buffer.take(i // 10)
        assert len(buffer) <= 16
