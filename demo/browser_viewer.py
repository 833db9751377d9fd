"""The viewer page in headless Chromium, for ``kpvid-demo --browser``: it opens the page, which
plays the stream as a user's browser does, and reads what the page measured
(``window.kpvid.glassToGlass``, from the time stamps of ``kpvid-receive --stamp-frames``).

Chromium is the system one (``$KPVID_CHROMIUM``, else /usr/bin/chromium, else ``chromium`` on
PATH), driven by Playwright's sync API; Playwright's own browser download is not used. Nothing
here can hang: every call has a deadline, past which the Playwright driver and the Chromium it
started are killed and the call fails with ``BrowserError``. The sync API refuses to run on a
thread with a running asyncio loop: use it from a plain thread (the demo's main thread).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psutil

log = logging.getLogger(__name__)

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
CALL_TIMEOUT = 30.0  # seconds any one call to the browser may take


class BrowserError(RuntimeError):
    """The browser failed, or did not answer in time (and was killed)."""


def require_browser() -> str:
    """The system Chromium to drive, once Playwright is known to be installed; SystemExit,
    saying what to do, when either is missing."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        raise SystemExit("kpvid-demo --browser needs Playwright's Python package (pip install "
                         "playwright; not its browser download: it drives the system "
                         "Chromium)") from None
    return chromium_executable()


def chromium_executable() -> str:
    """The system Chromium to drive; SystemExit, saying what to do, when there is none."""
    configured = os.environ.get("KPVID_CHROMIUM")
    if configured:
        if not os.access(configured, os.X_OK):
            raise SystemExit(f"kpvid-demo --browser: $KPVID_CHROMIUM={configured} is not an "
                             "executable")
        return configured
    found = "/usr/bin/chromium" if os.access("/usr/bin/chromium", os.X_OK) else \
        shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        raise SystemExit("kpvid-demo --browser needs Chromium (Debian: apt-get install "
                         "chromium), or $KPVID_CHROMIUM naming one")
    return found


def _kill_tree(processes: list[psutil.Process]) -> None:
    for root in processes:
        with contextlib.suppress(psutil.Error):
            for process in [*root.children(recursive=True), root]:
                with contextlib.suppress(psutil.Error):
                    process.kill()


class _Deadlines:
    """Kills the Playwright driver (and so the Chromium it started) when a guarded call
    overruns. Until ``driver`` is known, that is every child of this process started since
    (none but the driver is started meanwhile)."""

    def __init__(self) -> None:
        self.driver: list[psutil.Process] = []
        self.killed = False
        self._before = {child.pid for child in psutil.Process().children()}

    def started(self) -> list[psutil.Process]:
        """The driver, or while it is not known, this process's children started since."""
        return self.driver or [child for child in psutil.Process().children()
                               if child.pid not in self._before]

    @contextmanager
    def guard(self, seconds: float, what: str) -> Iterator[None]:
        def overrun() -> None:
            log.warning("the browser: %s took over %.0f s; killing it", what, seconds)
            self.killed = True
            _kill_tree(self.started())

        timer = threading.Timer(seconds, overrun)
        timer.daemon = True
        timer.start()
        try:
            yield
        except Exception as exc:
            raise BrowserError(f"{what}: {exc}") from exc
        finally:
            timer.cancel()
        if self.killed:
            raise BrowserError(f"{what}: no answer within {seconds:.0f} s")


class ViewerPage:
    """One viewer page open in headless Chromium."""

    def __init__(self, page: Any, deadlines: _Deadlines) -> None:
        self._page = page
        self._deadlines = deadlines

    def evaluate(self, script: str, what: str) -> Any:
        """``script`` (a JS function) evaluated in the page, within CALL_TIMEOUT seconds."""
        with self._deadlines.guard(CALL_TIMEOUT, what):
            return self._page.evaluate(script)

    def wait_until(self, condition: str, timeout: float, what: str) -> bool:
        """Wait at most ``timeout`` s for the JS predicate ``condition``; whether it held."""
        from playwright.sync_api import TimeoutError as PlaywrightTimeout

        try:
            with self._deadlines.guard(timeout + CALL_TIMEOUT, what):
                self._page.wait_for_function(condition, timeout=timeout * 1000, polling=100)
        except BrowserError as exc:
            if isinstance(exc.__cause__, PlaywrightTimeout):
                return False
            raise
        return True

    def glass_to_glass(self) -> dict | None:
        """What the page measured from the frames' time stamps (None: no stamped frame
        shown): {count, window, p50, p99, stages: {name: {p50, p99}}}, milliseconds."""
        return self.evaluate("() => window.kpvid.glassToGlass", "reading glass to glass")


@contextmanager
def viewer_page(url: str, executable: str) -> Iterator[ViewerPage]:
    """Chromium ``executable`` (see ``require_browser``), headless, showing the viewer page at
    ``url`` (the edge's self-signed certificate accepted) for the duration of the block;
    closed, or killed, on the way out. BrowserError when the browser fails."""
    from playwright.sync_api import sync_playwright

    deadlines = _Deadlines()
    try:
        with deadlines.guard(CALL_TIMEOUT, "starting Playwright"):
            playwright = sync_playwright().start()
        deadlines.driver = deadlines.started()
        try:
            with deadlines.guard(2 * CALL_TIMEOUT, "opening the viewer page in Chromium"):
                browser = playwright.chromium.launch(
                    executable_path=executable, headless=True, args=CHROMIUM_ARGS,
                    timeout=CALL_TIMEOUT * 1000)
                context = browser.new_context(ignore_https_errors=True)
                page = context.new_page()
                page.goto(url, timeout=CALL_TIMEOUT * 1000, wait_until="domcontentloaded")
            yield ViewerPage(page, deadlines)
        finally:
            if not deadlines.killed:
                with contextlib.suppress(BrowserError), \
                        deadlines.guard(CALL_TIMEOUT, "closing the browser"):
                    playwright.stop()
    finally:
        _kill_tree(deadlines.started())  # whatever did not close: no stray Chromium
