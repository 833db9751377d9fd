"""The browser helper itself (tests/browser.py): a page that never answers fails the test in
bounded time instead of hanging it, and the next page gets a fresh Chromium."""

from __future__ import annotations

import time

import pytest

from tests.browser import ESCALATE, BrowserHung, viewer_browser

PAGE = "data:text/html,<title>kpvid</title><p id=said>ready</p>"


def test_a_page_that_never_answers_is_killed_and_the_browser_comes_back():
    with viewer_browser() as browser:
        with browser.viewer(PAGE) as page:
            assert page.evaluate("() => document.getElementById('said').innerText") == "ready"
            started = time.monotonic()
            with pytest.raises(BrowserHung, match="spinning"):
                # Playwright's evaluate has no timeout: without the watchdog, this never ends
                page.evaluate("() => { for (;;) {} }", timeout=2.0, what="spinning")
            assert time.monotonic() - started < 2.0 + ESCALATE
        with browser.viewer(PAGE) as page:  # a new Chromium, launched for it
            assert page.evaluate("() => document.getElementById('said').innerText") == "ready"
            assert page.snapshot()["dialogs"] == []
