"""Glass to glass in a real browser: an edge that time-stamps its viewers' frames
(``--stamp-frames``, receiver/frame_stamp.py), a real sender streaming the 64x64 test model, and
the viewer page in headless Chromium reading the stamps of the frames it shows.

The edge and the sender run on an asyncio loop in a background thread (tests/live_edge.py).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.browser import ViewerBrowser, viewer_browser
from tests.edge_harness import TOKEN
from tests.live_edge import LiveEdge

STREAM = "g2g"
MEASURED = ("() => (window.kpvid?.glassToGlass?.count ?? 0) >= 30"
            " && !document.getElementById('b-g2g-row').hidden")


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveEdge]:
    with LiveEdge(tmp_path_factory.mktemp("edge"), STREAM, domain="photos", fps=20.0,
                  length=400, stamp_frames=True) as edge:
        yield edge


@pytest.fixture(scope="module")
def browser() -> Iterator[ViewerBrowser]:
    with viewer_browser() as b:
        yield b


def test_the_page_measures_glass_to_glass_from_stamped_frames(live: LiveEdge,
                                                             browser: ViewerBrowser):
    assert live.edge is not None
    with browser.viewer(f"{live.edge.url}/?token={TOKEN}&stream={STREAM}") as page:
        result = page.wait(timeout=30, until=MEASURED)
        assert not result["timed_out"], result
        g2g = page.evaluate("() => window.kpvid.glassToGlass")
    assert g2g["count"] >= 30 and 0 < g2g["window"] <= g2g["count"], g2g
    # one machine: the sender's, the edge's and the browser's clocks are the same clock
    assert 0 < g2g["p50"] <= g2g["p99"] < 2000, g2g
    stages = g2g["stages"]
    assert set(stages) == {"captureToEdgeOut", "edgeOutToReceive", "receiveToDisplay"}
    # every frame's total is its capture -> edge out plus the non-negative rest (to within
    # clock tolerance), so the p50s are in that order too
    assert 0 < stages["captureToEdgeOut"]["p50"] < g2g["p50"] + 5, g2g
    for name in ("edgeOutToReceive", "receiveToDisplay"):
        assert -5 < stages[name]["p50"] < 1000, g2g
    text = result["stats"]
    assert text["b-g2g"].endswith(" ms") and float(text["b-g2g"].split()[0]) > 0, text
    assert text["b-g2g-split"].count("/") == 2, text


def test_without_stamps_the_page_shows_no_glass_to_glass(live: LiveEdge,
                                                         browser: ViewerBrowser):
    assert live.edge is not None
    output = live.edge.edge.outputs[STREAM]
    output.stamp_frames = False
    try:
        result = browser.open(f"{live.edge.url}/?token={TOKEN}&stream={STREAM}", timeout=30,
                              min_frames=30)
    finally:
        output.stamp_frames = True
    assert not result["timed_out"] and result["state"] == "playing", result
    assert "Glass to glass" not in result["stats_text"], result["stats_text"]
    assert result["stats"]["b-g2g"] == "\u2013"
