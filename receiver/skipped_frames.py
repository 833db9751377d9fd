"""Which frames the sender skipped on purpose, from the keypoints that arrived.

Every ``Keypoints`` message says how many frames the sender skips after it (``skip_after``: N
after the last observed frame of a group, 0 inside a run of observed frames), so a sender may
change N at any group without telling the edge otherwise. A frame without a set counts as
*predicted* when the sender skipped it and as *lost* when it sent one. Past the newest run end
that arrived (its next sets may be lost), the edge assumes the sender kept that schedule: the
hello's ``observe`` frames, then ``skip_after``, and so on; before the first one, the hello's
schedule from frame 0.

With ``observe`` > 1 a run end with N = 0 looks like a set inside a run; the edge then keeps the
previous N, and a lost set among those frames counts as predicted.
"""

from __future__ import annotations


class SkippedFrames:
    """The sender's run ends (see the module docstring); the most recent ``keep`` are kept."""

    def __init__(self, observe: int, predict: int, keep: int = 64) -> None:
        self.observe = observe
        # a group's last observed frame -> frames skipped after it; the hello's schedule first
        self._run_ends: dict[int, int] = {-1 - predict: predict}
        self._keep = keep

    def add(self, frame_index: int, skip_after: int) -> None:
        """A set arrived for ``frame_index``, saying ``skip_after``."""
        if skip_after == 0 and self.observe > 1:
            return  # inside a run of observed frames
        self._run_ends[frame_index] = skip_after
        if len(self._run_ends) > self._keep:
            del self._run_ends[min(self._run_ends)]

    @property
    def predict(self) -> int:
        """N after the newest run end (the hello's until one arrives)."""
        return self._run_ends[max(self._run_ends)]

    def skipped(self, frame_index: int) -> bool:
        """Whether the sender skipped ``frame_index`` on purpose (as far as the edge knows)."""
        ends = [end for end in self._run_ends if end < frame_index]
        if not ends:
            return False  # older than anything remembered: count it as sent
        end = max(ends)
        skip = self._run_ends[end]
        return (frame_index - end - 1) % (self.observe + skip) < skip
