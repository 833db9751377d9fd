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
        # no token in the URL: the page asks in its form, the helper fills it in
        browser.open(f"{base}/", timeout=15, enter_token="secret")

Nothing here can hang a test. Every wait has a timeout; calls that Playwright does not time out
itself (evaluate, new_context, close...) run under a watchdog that kills Chromium (then, if that
does not free the call, the Playwright driver) when one overruns its deadline by ``GRACE``
seconds, so that the call fails with ``BrowserHung`` instead of blocking the suite (a spinning
or blocked renderer once held a test for minutes). A browser killed so is launched again for
the next page. Dialogs (the page should open none) are dismissed at once and listed in the
snapshot's ``dialogs``.

The sync Playwright API refuses to run on a thread with a running asyncio loop: serve the
receiver from another thread (or process).

Chromium is the system one (``$KPVID_CHROMIUM``, else /usr/bin/chromium, else ``chromium`` on
PATH); without it the calling test is skipped. Playwright's own browser download is not used.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import Any

import psutil
import pytest

from kpvid.demo.browser_viewer import CHROMIUM_ARGS

GRACE = 20.0  # s a Playwright call may overrun its own timeout (or take, without one)
ESCALATE = 10.0  # s after killing Chromium: kill the driver too if the call is still blocked
LAUNCH_TIMEOUT = 60.0
ACTION_TIMEOUT = 15.0  # default of every Playwright action and navigation without its own

# What the page shows. ``stats`` maps the stats table's cell ids (s-observed, b-frames, ...) to
# their text; ``stats_text`` is the whole table as the user reads it; ``token_form``: the
# page's token form is shown, ``token_reason``: what it says.
SNAPSHOT_JS = """() => {
  const k = window.kpvid || {};
  const video = document.querySelector("video");
  const text = (sel) => { const el = document.querySelector(sel); return el ? el.innerText : ""; };
  const stats = {};
  document.querySelectorAll("#stats td[id]").forEach((td) => { stats[td.id] = td.innerText; });
  const form = document.getElementById("token-form");
  return {
    state: k.state ?? null, frames_decoded: k.framesDecoded ?? 0, stream: k.stream ?? null,
    error: k.error ?? null,
    video_width: video ? video.videoWidth : 0, video_height: video ? video.videoHeight : 0,
    paused: video ? video.paused : true,
    status_text: text("#status"), stats_text: text("#stats"), stats,
    token_form: !!form && !form.hidden, token_reason: text("#token-reason"),
  };
}"""


class BrowserHung(RuntimeError):
    """A Playwright call overran its deadline; the watchdog killed the browser to end it."""


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


# ---------------------------------------------------------------------------- watchdog

def _children() -> dict[int, psutil.Process]:
    """This process's descendants by pid."""
    return {p.pid: p for p in psutil.Process().children(recursive=True)}


def _kill_trees(processes: list[psutil.Process]) -> list[int]:
    """Kill each process and its descendants; the pids killed."""
    killed: list[int] = []
    for root in processes:
        with contextlib.suppress(psutil.Error):
            for process in [*root.children(recursive=True), root]:
                if process.pid not in killed:
                    with contextlib.suppress(psutil.Error):
                        process.kill()
                        killed.append(process.pid)
    return killed


@dataclass
class _Deadline:
    at: float
    what: str
    stage: int = 0  # 1: Chromium killed, 2: the driver too


class _Watchdog:
    """Kills the browser (then the driver) when a guarded call overruns its deadline."""

    def __init__(self) -> None:
        self.chromium: list[psutil.Process] = []
        self.driver: list[psutil.Process] = []
        self.fired: str | None = None  # what overran, once it has (until the next launch)
        self._armed: list[_Deadline] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="viewer-browser-watchdog",
                                         daemon=True)
        self._thread.start()

    @contextmanager
    def guard(self, seconds: float, what: str) -> Iterator[None]:
        """The block must end within ``seconds``; past that the browser is killed and the
        block fails with ``BrowserHung``."""
        deadline = _Deadline(time.monotonic() + max(seconds, 1.0), what)
        with self._lock:
            self._armed.append(deadline)
        try:
            yield
        except Exception as exc:
            if deadline.stage:
                raise BrowserHung(self._message(deadline)) from exc
            raise
        finally:
            with self._lock:
                self._armed.remove(deadline)
        if deadline.stage:  # it came back by itself after all, but the browser is gone
            raise BrowserHung(self._message(deadline))

    @staticmethod
    def _message(deadline: _Deadline) -> str:
        return (f"{deadline.what}: no answer in time; the watchdog killed Chromium"
                + (" and the Playwright driver" if deadline.stage > 1 else ""))

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            now = time.monotonic()
            with self._lock:
                overdue = [d for d in self._armed if now > d.at]
            for deadline in overdue:
                if deadline.stage == 0:
                    deadline.stage = 1
                    self.fired = deadline.what
                    killed = _kill_trees(self.chromium)
                    print(f"\n[viewer browser watchdog] {deadline.what}: overran its deadline; "
                          f"killed Chromium (pids {killed})", file=sys.stderr, flush=True)
                elif deadline.stage == 1 and now > deadline.at + ESCALATE:
                    deadline.stage = 2
                    killed = _kill_trees(self.driver)
                    print(f"\n[viewer browser watchdog] {deadline.what}: still blocked; "
                          f"killed the Playwright driver (pids {killed})", file=sys.stderr,
                          flush=True)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)


# ---------------------------------------------------------------------------- pages

class ViewerPage:
    """One open viewer page (sync Playwright: use it on the thread that opened it)."""

    def __init__(self, page: Any, log: dict[str, list[str]], guard: Callable) -> None:
        self.page = page  # the Playwright page; its calls are not guarded: prefer the methods
        self.log = log  # "dialogs": dialog texts seen; "console": console lines, page errors
        self._guard = guard
        self._opened = time.monotonic()

    def evaluate(self, script: str, *, timeout: float = GRACE,
                 what: str = "evaluating a script") -> Any:
        """``page.evaluate(script)``, in at most ``timeout`` s (Playwright's has no timeout:
        past it the watchdog kills the browser and this raises ``BrowserHung``)."""
        with self._guard(timeout, what):
            return self.page.evaluate(script)

    def snapshot(self) -> dict[str, Any]:
        """What the page shows now: ``SNAPSHOT_JS`` keys plus ``seconds`` since it was opened
        and copies of ``dialogs`` and ``console``."""
        result = self.evaluate(SNAPSHOT_JS, what="reading the page")
        result.update(seconds=round(time.monotonic() - self._opened, 3),
                      dialogs=list(self.log["dialogs"]), console=list(self.log["console"]))
        return result

    def wait(self, *, timeout: float, min_frames: int = 10,
             until: str | None = None) -> dict[str, Any]:
        """Wait at most ``timeout`` seconds until ``until`` (a JS predicate; default:
        ``min_frames`` frames shown) holds, then return ``snapshot()`` plus ``timed_out``."""
        from playwright.sync_api import TimeoutError as PlaywrightTimeout

        try:
            with self._guard(timeout + GRACE, "waiting for the page"):
                self.page.wait_for_function(until or frames_condition(min_frames),
                                            timeout=max(1.0, timeout * 1000), polling=100)
            timed_out = False
        except PlaywrightTimeout:
            timed_out = True
        return {**self.snapshot(), "timed_out": timed_out}

    def enter_token(self, token: str, *, timeout: float = ACTION_TIMEOUT) -> None:
        """Wait (at most ``timeout`` s) for the page's token form, type ``token`` in and
        submit it, as a user does."""
        ms = max(1.0, timeout * 1000)
        with self._guard(timeout + GRACE, "entering the token"):
            self.page.locator("#token-form").wait_for(state="visible", timeout=ms)
            self.page.locator("#token-input").fill(token, timeout=ms)
            self.page.locator("#token-submit").click(timeout=ms)


class ViewerBrowser:
    """One headless Chromium; every viewer gets a fresh, isolated browser context. Launched
    again when the watchdog had to kill it."""

    def __init__(self, playwright: Any, executable: str, watchdog: _Watchdog) -> None:
        self._playwright = playwright
        self._executable = executable
        self._watchdog = watchdog
        self._browser: Any = None
        self._launch()

    def _launch(self) -> None:
        before = set(_children())
        self._watchdog.fired = None
        with self._watchdog.guard(LAUNCH_TIMEOUT + GRACE, "launching Chromium"):
            self._browser = self._playwright.chromium.launch(
                executable_path=self._executable, headless=True, args=CHROMIUM_ARGS,
                timeout=LAUNCH_TIMEOUT * 1000)
        known = {p.pid for p in self._watchdog.driver}
        self._watchdog.chromium = [p for pid, p in _children().items()
                                   if pid not in before and pid not in known]

    def _ready(self) -> Any:
        """The browser, launched again if the watchdog killed it."""
        if self._watchdog.fired is not None or not self._browser.is_connected():
            with contextlib.suppress(Exception), self._watchdog.guard(GRACE, "closing Chromium"):
                self._browser.close()
            _kill_trees(self._watchdog.chromium)
            self._launch()
        return self._browser

    @contextmanager
    def viewer(self, url: str, *, timeout: float = 15.0,
               enter_token: str | None = None) -> Iterator[ViewerPage]:
        """Open the page at ``url`` for the block (at most ``timeout`` s to load it). With
        ``enter_token``, type that into the page's token form as soon as it shows."""
        guard = self._watchdog.guard
        browser = self._ready()
        with guard(GRACE, "opening a browser context"):
            context = browser.new_context(ignore_https_errors=True)
        failed = False
        try:
            context.set_default_timeout(ACTION_TIMEOUT * 1000)
            context.set_default_navigation_timeout(max(timeout, ACTION_TIMEOUT) * 1000)
            with guard(GRACE, "opening a page"):
                page = context.new_page()
            log: dict[str, list[str]] = {"dialogs": [], "console": []}
            page.on("console", lambda m: log["console"].append(f"{m.type}: {m.text}"))
            page.on("pageerror", lambda e: log["console"].append(f"error: {e}"))
            page.on("dialog", lambda d: _dismiss(d, log))
            with guard(timeout + GRACE, f"loading {url}"):
                page.goto(url, timeout=timeout * 1000, wait_until="domcontentloaded")
            viewer = ViewerPage(page, log, guard)
            if enter_token is not None:
                viewer.enter_token(enter_token, timeout=timeout)
            yield viewer
        except BaseException:
            failed = True
            raise
        finally:
            try:
                with guard(GRACE, "closing a browser context"):
                    context.close()
            except Exception as exc:
                # a failure of the block is the one to report; and a browser the watchdog
                # killed has no context left to close
                if not failed and self._watchdog.fired is None:
                    raise
                print(f"\n[viewer browser] closing the context failed: {exc!r}",
                      file=sys.stderr)

    def open(self, url: str, *, timeout: float, min_frames: int = 10,
             until: str | None = None, enter_token: str | None = None) -> dict[str, Any]:
        """Open one viewer; see ``open_all``."""
        return self.open_all([url], timeout=timeout, min_frames=min_frames, until=until,
                             enter_token=enter_token)[0]

    def open_all(self, urls: list[str], *, timeout: float, min_frames: int = 10,
                 until: str | None = None,
                 enter_token: str | None = None) -> list[dict[str, Any]]:
        """Open every url at once (each its own viewer), wait at most ``timeout`` seconds in
        all until each page satisfies ``until`` (see ``ViewerPage.wait``), close them and
        return one ``ViewerPage.wait`` result per url."""
        deadline = time.monotonic() + timeout
        with ExitStack() as stack:
            pages = [stack.enter_context(self.viewer(url, timeout=timeout,
                                                     enter_token=enter_token))
                     for url in urls]
            return [page.wait(timeout=deadline - time.monotonic(), min_frames=min_frames,
                              until=until) for page in pages]

    def close(self) -> None:
        """Close the browser; whatever does not close in time is killed."""
        try:
            with self._watchdog.guard(GRACE, "closing Chromium"):
                self._browser.close()
        except Exception as exc:
            print(f"\n[viewer browser] closing Chromium failed: {exc!r}", file=sys.stderr)
        finally:
            _kill_trees(self._watchdog.chromium)


def _dismiss(dialog: Any, log: dict[str, list[str]]) -> None:
    """A dialog blocks the page until answered: note it and dismiss it at once."""
    log["dialogs"].append(f"{dialog.type}: {dialog.message}")
    dialog.dismiss()


@contextmanager
def viewer_browser() -> Iterator[ViewerBrowser]:
    """Launch headless Chromium (fresh profile) for the duration of the block; on the way out
    it is closed, and killed (with the Playwright driver) if it does not close in time.

    Skips the calling test when no Chromium is installed. Sync Playwright: use it on a thread
    without a running asyncio loop; while the block is open its thread looks like one to
    asyncio (``asyncio.run`` refuses to start there).
    """
    executable = chromium_path()
    if executable is None:
        pytest.skip("no system Chromium (/usr/bin/chromium or $KPVID_CHROMIUM) to drive")
    if hasattr(os, "sched_getscheduler") and os.sched_getscheduler(0) != os.SCHED_OTHER:
        # Chromium would inherit it: at real-time priority it has spun on every core
        pytest.fail(f"refusing to launch Chromium from a thread at scheduling policy "
                    f"{os.sched_getscheduler(0)} (not SCHED_OTHER)")
    from playwright.sync_api import sync_playwright

    watchdog = _Watchdog()
    try:
        before = set(_children())
        with watchdog.guard(LAUNCH_TIMEOUT, "starting Playwright"):
            playwright = sync_playwright().start()
        watchdog.driver = [p for pid, p in _children().items() if pid not in before]
        try:
            browser = ViewerBrowser(playwright, executable, watchdog)
            try:
                yield browser
            finally:
                browser.close()
        finally:
            try:
                with watchdog.guard(GRACE, "stopping Playwright"):
                    playwright.stop()
            except Exception as exc:
                print(f"\n[viewer browser] stopping Playwright failed: {exc!r}",
                      file=sys.stderr)
    finally:
        watchdog.stop()
        _kill_trees(watchdog.chromium + watchdog.driver)  # anything left: no stray Chromium
