"""The package's aiortc viewer (`kpvid.demo.viewer_peer`) for a test's edge, with what the tests
measure of its arrivals."""

from __future__ import annotations

from kpvid.demo.viewer_peer import ViewerPeer as PackageViewerPeer
from tests.edge_harness import EdgeHandle


class ViewerPeer(PackageViewerPeer):
    """A viewer of `handle`'s edge, with its view token."""

    def __init__(self, handle: EdgeHandle) -> None:
        super().__init__(handle.url, handle.view_token, handle.client_ssl())
        self.handle = handle

    def frames_since(self, moment: float) -> int:
        return sum(1 for at, _ in self.arrivals if at >= moment)

    def first_after(self, moment: float) -> float | None:
        """When the first frame after `moment` arrived, or None."""
        return next((at for at, _ in self.arrivals if at >= moment), None)

    def rate(self, start: float, end: float) -> float:
        """Frames a second that arrived between `start` and `end` (monotonic times)."""
        return sum(1 for at, _ in self.arrivals if start <= at < end) / (end - start)

    def largest_gap(self, start: float, end: float) -> float:
        """The longest wait between two frames that arrived between `start` and `end`."""
        times = [at for at, _ in self.arrivals if start <= at <= end]
        return max((b - a for a, b in zip(times, times[1:], strict=False)), default=end - start)
