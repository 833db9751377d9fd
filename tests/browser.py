"""Headless Chromium driving the kpvid viewer page (receiver/static/viewer.html) for tests.

The page exposes ``window.kpvid = {framesDecoded, state, stream, width, height, error}``; these
helpers open it, wait for a condition on that object (by default: ``min_frames`` frames shown)
and return what the page shows as a plain dict (see ``SNAPSHOT_JS``)::

    with viewer_browser() as browser:
        result = browser.open(f"{base}/?token=secret", timeout=15)
        assert result["frames_decoded"] >= 10, result
        with browser.viewer(url) as page:   # several steps
            page.wait(timeout=15, until=state_condition("playing"))
            ...  # stop the stream on the receiver
            assert page.wait(timeout=15, until=state_condition("waiting"))["state"] == "waiting"

The sync Playwright API refuses to run on a thread with a running asyncio loop: serve the
receiver from another thread (or process).

Chromium is the system one (``$KPVID_CHROMIUM``, else /usr/bin/chromium, else ``chromium`` on
PATH); without it the calling test is skipped. Playwright's own browser download is not used.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

import pytest

CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--autoplay-policy=no-user-gesture-required",
    # real host candidates instead of mDNS names, which aiortc cannot resolve offline
    "--disable-features=WebRtcHideLocalIpsWithMdns",
]

# What the page shows. ``stats`` maps the stats table's cell ids (s-observed, b-frames, ...) to
# their text; ``stats_text`` is the whole table as the user reads it.
SNAPSHOT_JS = """() => {
  const k = window.kpvid || {};
  const video = document.querySelector("video");
  const text = (sel) => { const el = document.querySelector(sel); return el ? el.innerText : ""; };
  const stats = {};
  document.querySelectorAll("#stats td[id]").forEach((td) => { stats[td.id] = td.innerText; });
  return {
    state: k.state ?? null, frames_decoded: k.framesDecoded ?? 0, stream: k.stream ?? null,
    error: k.error ?? null,
    video_width: video ? video.videoWidth : 0, video_height: video ? video.videoHeight : 0,
    paused: video ? video.paused : true,
    status_text: text("#status"), stats_text: text("#stats"), stats,
  };
}"""


def chromium_path() -> str | None:
    """The system Chromium to drive, or None when there is none."""
    configured = os.environ.get("KPVID_CHROMIUM")
    if configured:
        return configured if os.access(configured, os.X_OK) else None
    if os.access("/usr/bin/chromium", os.X_OK):
        return "/usr/bin/chromium"
    return shutil.which("chromium") or shutil.which("chromium-browser")


def frames_condition(min_frames: int) -> str:
    """JS predicate: the page has shown at least ``min_frames`` video frames."""
    return f"() => (window.kpvid?.framesDecoded ?? 0) >= {int(min_frames)}"


def state_condition(*states: str) -> str:
    """JS predicate: the page's ``window.kpvid.state`` is one of ``states``."""
    names = ", ".join(f'"{s}"' for s in states)
    return f"() => [{names}].includes(window.kpvid?.state)"


class ViewerPage:
    """One open viewer page (sync Playwright: use it on the thread that opened it)."""

    def __init__(self, page: Any, log: dict[str, list[str]]) -> None:
        self.page = page
        self.log = log  # "dialogs": prompt texts seen; "console": console lines, page errors
        self._opened = time.monotonic()

    def snapshot(self) -> dict[str, Any]:
        """What the page shows now: ``SNAPSHOT_JS`` keys plus ``seconds`` since it was opened
        and copies of ``dialogs`` and ``console``."""
        result = self.page.evaluate(SNAPSHOT_JS)
        result.update(seconds=round(time.monotonic() - self._opened, 3),
                      dialogs=list(self.log["dialogs"]), console=list(self.log["console"]))
        return result

    def wait(self, *, timeout: float, min_frames: int = 10,
             until: str | None = None) -> dict[str, Any]:
        """Wait at most ``timeout`` seconds until ``until`` (a JS predicate; default:
        ``min_frames`` frames shown) holds, then return ``snapshot()`` plus ``timed_out``."""
        from playwright.sync_api import TimeoutError as PlaywrightTimeout

        try:
            self.page.wait_for_function(until or frames_condition(min_frames),
                                        timeout=max(1.0, timeout * 1000), polling=100)
            timed_out = False
        except PlaywrightTimeout:
            timed_out = True
        return {**self.snapshot(), "timed_out": timed_out}


class ViewerBrowser:
    """One headless Chromium; every viewer gets a fresh, isolated browser context."""

    def __init__(self, browser: Any) -> None:
        self._browser = browser

    @contextmanager
    def viewer(self, url: str, *, timeout: float = 15.0,
               prompt_answer: str | None = None) -> Iterator[ViewerPage]:
        """Open the page at ``url`` for the block. Prompts are dismissed, or answered with
        ``prompt_answer``."""
        context = self._browser.new_context(ignore_https_errors=True)
        try:
            page = context.new_page()
            log: dict[str, list[str]] = {"dialogs": [], "console": []}
            page.on("console", lambda m: log["console"].append(f"{m.type}: {m.text}"))
            page.on("pageerror", lambda e: log["console"].append(f"error: {e}"))
            page.on("dialog", lambda d: _answer(d, log, prompt_answer))
            page.goto(url, timeout=timeout * 1000, wait_until="domcontentloaded")
            yield ViewerPage(page, log)
        finally:
            context.close()

    def open(self, url: str, *, timeout: float, min_frames: int = 10,
             until: str | None = None, prompt_answer: str | None = None) -> dict[str, Any]:
        """Open one viewer; see ``open_all``."""
        return self.open_all([url], timeout=timeout, min_frames=min_frames, until=until,
                             prompt_answer=prompt_answer)[0]

    def open_all(self, urls: list[str], *, timeout: float, min_frames: int = 10,
                 until: str | None = None,
                 prompt_answer: str | None = None) -> list[dict[str, Any]]:
        """Open every url at once (each its own viewer), wait at most ``timeout`` seconds in
        all until each page satisfies ``until`` (see ``ViewerPage.wait``), close them and
        return one ``ViewerPage.wait`` result per url."""
        deadline = time.monotonic() + timeout
        with ExitStack() as stack:
            pages = [stack.enter_context(self.viewer(url, timeout=timeout,
                                                     prompt_answer=prompt_answer))
                     for url in urls]
            return [page.wait(timeout=deadline - time.monotonic(), min_frames=min_frames,
                              until=until) for page in pages]


def _answer(dialog: Any, log: dict[str, list[str]], prompt_answer: str | None) -> None:
    log["dialogs"].append(dialog.message)
    if dialog.type == "prompt" and prompt_answer is not None:
        dialog.accept(prompt_answer)
    else:
        dialog.dismiss()


@contextmanager
def viewer_browser() -> Iterator[ViewerBrowser]:
    """Launch headless Chromium (fresh profile) for the duration of the block.

    Skips the calling test when no Chromium is installed. Sync Playwright: use it on a thread
    without a running asyncio loop; while the block is open its thread looks like one to
    asyncio (``asyncio.run`` refuses to start there).
    """
    executable = chromium_path()
    if executable is None:
        pytest.skip("no system Chromium (/usr/bin/chromium or $KPVID_CHROMIUM) to drive")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, headless=True,
                                             args=CHROMIUM_ARGS)
        try:
            yield ViewerBrowser(browser)
        finally:
            browser.close()
