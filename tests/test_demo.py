"""The demo's own arithmetic: the side-by-side's timeline."""

from __future__ import annotations

import numpy as np

from kpvid.demo.streaming import on_stream_timeline


def test_skipped_frames_hold_the_last_picture_so_the_side_by_side_stays_aligned():
    frames = np.arange(4, dtype=np.uint8).reshape(4, 1, 1, 1) * 10  # recorded: 0, 10, 20, 30
    timeline = on_stream_timeline([1, 2, 5, 6], frames, 9)
    # before the first recorded frame: the first; a gap (3, 4) and the end (7, 8): the last one
    assert timeline[:, 0, 0, 0].tolist() == [0, 0, 10, 10, 10, 20, 30, 30, 30]
    assert on_stream_timeline([0, 1], frames[:2], 2).tolist() == frames[:2].tolist()
