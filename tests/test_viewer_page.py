"""The viewer page in headless Chromium, against the real edge with a real sender streaming.

The edge and the sender run on an asyncio loop in a background thread (sync Playwright cannot
share a thread with a running loop); each test opens fresh browser contexts.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from kpvid.receiver.edge import MAX_VIEWERS
from tests.browser import ViewerBrowser, state_condition, viewer_browser
from tests.edge_harness import TOKEN
from tests.live_edge import LiveEdge

STREAM = "cam1"
FORM_SHOWN = "() => !document.getElementById('token-form').hidden"
PLAYING = "() => window.kpvid?.state === 'playing' && window.kpvid.framesDecoded >= 3"


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveEdge]:
    with LiveEdge(tmp_path_factory.mktemp("edge"), STREAM) as edge:
        yield edge


@pytest.fixture(scope="module")
def browser() -> Iterator[ViewerBrowser]:
    with viewer_browser() as b:
        yield b


def test_plays_without_click_and_shows_live_stats(live: LiveEdge, browser: ViewerBrowser):
    until = ("() => window.kpvid?.framesDecoded >= 10"
             " && document.getElementById('s-viewers').innerText === '1'")
    result = browser.open(f"{live.url}/?token={TOKEN}", timeout=30, until=until)
    assert not result["timed_out"], result
    assert (result["video_width"], result["video_height"]) == (64, 64)
    assert result["state"] == "playing" and not result["paused"]
    assert result["stream"] == STREAM
    assert result["dialogs"] == [] and not result["token_form"]  # the token came from the URL
    stats = result["stats"]
    assert stats["s-viewers"] == "1"
    assert stats["s-predictor"] == "constant-velocity"  # the harness edge's predictor
    assert int(stats["s-observed"].replace(",", "")) > 0
    assert int(stats["s-predicted"].replace(",", "")) > 0
    assert stats["s-kbps"].endswith("kbps") and float(stats["s-kbps"].split()[0]) > 1
    assert stats["s-latency"].endswith("ms")


def test_two_viewers_and_a_missing_stream(live: LiveEdge, browser: ViewerBrowser):
    both = browser.open_all([f"{live.url}/?token={TOKEN}&stream={STREAM}"] * 2, timeout=30,
                            min_frames=5)
    assert all(r["frames_decoded"] >= 5 and not r["timed_out"] for r in both), both
    missing = browser.open(f"{live.url}/?token={TOKEN}&stream=nope", timeout=15,
                           until=state_condition("waiting"))
    assert missing["state"] == "waiting", missing
    assert "nope" in missing["status_text"] and missing["frames_decoded"] == 0


def test_a_wrong_token_is_refused_and_the_form_recovers(live: LiveEdge, browser: ViewerBrowser):
    with browser.viewer(f"{live.url}/?token=wrong") as page:
        refused = page.wait(timeout=15, until=FORM_SHOWN)
        assert not refused["timed_out"], refused
        assert refused["state"] == "unauthorized", refused
        assert "401" in refused["status_text"] and refused["frames_decoded"] == 0
        # asked again in the page's own form, with the reason (no dialog blocks the page)
        assert "did not accept" in refused["token_reason"] and refused["dialogs"] == []
        page.enter_token("still-wrong")  # refused again: the form comes back
        again = page.wait(timeout=15, until=f"() => {FORM_SHOWN}()"
                                            f" && window.kpvid.connections === 0"
                                            f" && window.kpvid.state === 'unauthorized'")
        assert not again["timed_out"] and "did not accept" in again["token_reason"], again
        page.enter_token(TOKEN)
        fixed = page.wait(timeout=30, until=PLAYING)
        assert not fixed["timed_out"] and not fixed["token_form"], fixed
        assert fixed["error"] is None and fixed["dialogs"] == []
        # kept for this tab, as a token from the URL is
        assert page.evaluate("() => sessionStorage.getItem('kpvid-token')") == TOKEN


def test_without_a_token_the_page_asks_in_its_form(live: LiveEdge, browser: ViewerBrowser):
    with browser.viewer(f"{live.url}/?stream={STREAM}") as page:
        asked = page.wait(timeout=15, until=FORM_SHOWN)
        assert not asked["timed_out"], asked
        assert asked["state"] == "token" and "needs a token" in asked["token_reason"], asked
        assert asked["frames_decoded"] == 0 and asked["dialogs"] == []
        page.enter_token(TOKEN)
        playing = page.wait(timeout=30, until=PLAYING)
        assert not playing["timed_out"] and not playing["token_form"], playing
    # another tab has no token yet: asked again (the helper types it in as the form shows)
    other = browser.open(f"{live.url}/", timeout=30, until=PLAYING, enter_token=TOKEN)
    assert not other["timed_out"] and other["stream"] == STREAM, other


def test_the_page_follows_a_sender_that_restarts(live: LiveEdge, browser: ViewerBrowser):
    with browser.viewer(f"{live.url}/?token={TOKEN}") as page:
        first = page.wait(timeout=30, min_frames=5)
        assert not first["timed_out"], first
        live.restart_sender()
        again = page.wait(timeout=30, until=(
            f"() => window.kpvid?.state === 'playing'"
            f" && window.kpvid.framesDecoded > {first['frames_decoded'] + 30}"))
        assert not again["timed_out"], again
        assert again["stream"] == STREAM


def test_a_full_edge_tells_the_page_why_and_the_page_retries(live: LiveEdge,
                                                              browser: ViewerBrowser):
    options = live.edge.edge.options
    try:
        options.max_viewers = 0
        with browser.viewer(f"{live.url}/?token={TOKEN}") as page:
            refused = page.wait(timeout=20, until=(
                "() => (window.kpvid?.error ?? '').includes('HTTP 503 (edge full')"))
            assert not refused["timed_out"], refused
            options.max_viewers = MAX_VIEWERS
            again = page.wait(timeout=30, min_frames=5)
            assert not again["timed_out"], again
    finally:
        options.max_viewers = MAX_VIEWERS


def test_a_closed_tab_stops_counting_as_a_viewer_at_once(live: LiveEdge, browser: ViewerBrowser):
    """The page hangs up when it goes away; without that the edge kept counting a closed tab
    until ICE consent checks failed, half a minute later."""
    edge = live.edge.edge

    def viewers() -> int:
        return edge.streams[STREAM].viewers

    before = viewers()
    with browser.viewer(f"{live.url}/?token={TOKEN}&stream={STREAM}") as page:
        assert not page.wait(timeout=30, min_frames=3)["timed_out"]
        assert viewers() == before + 1
        page.page.close()
    deadline = time.monotonic() + 5.0
    while viewers() > before and time.monotonic() < deadline:
        time.sleep(0.1)
    assert viewers() == before


class PinnedRenderRate:
    """Stands in for the engine's RenderRate: an edge that stays overloaded."""

    every = 2
    share = None

    def update(self, now: float, busy: float) -> int:
        return self.every

    def note_lag(self, seconds: float, now: float, busy: float) -> int:
        return self.every


def test_the_page_says_when_the_edge_thins_frames_under_load(live: LiveEdge,
                                                              browser: ViewerBrowser):
    engine = live.edge.edge.engine
    calm = engine.render_rate
    engine.render_rate = PinnedRenderRate()
    try:
        with browser.viewer(f"{live.url}/?token={TOKEN}&stream={STREAM}") as page:
            told = page.wait(timeout=30, until=(
                "() => window.kpvid?.renderEvery === 2 && document.getElementById('load')"
                ".innerText.includes('every 2nd frame') && document.getElementById("
                "'s-thinned').innerText !== '0'"))
            assert not told["timed_out"], told
            engine.render_rate = calm
            gone = page.wait(timeout=30, until=(
                "() => window.kpvid?.renderEvery === 1 && document.getElementById('load')"
                ".hidden"))
            assert not gone["timed_out"], gone
    finally:
        engine.render_rate = calm
