"""A log for what bad input causes (refused messages, failed frames), which a flood of bad input
cannot flood: both ends use it wherever a peer controls how often a warning is due."""

from __future__ import annotations

import logging
import time


class RateLimitedLog:
    """Logs a warning per key at most once every `interval` seconds, with the count it held back."""

    def __init__(self, logger: logging.Logger, interval: float = 5.0) -> None:
        self.logger = logger
        self.interval = interval
        self._last: dict[str, float] = {}
        self._held: dict[str, int] = {}

    def warning(self, key: str, message: str, *args: object) -> None:
        now = time.monotonic()
        if now - self._last.get(key, -self.interval) < self.interval:
            self._held[key] = self._held.get(key, 0) + 1
            return
        held = self._held.pop(key, 0)
        self._last[key] = now
        suffix = f" ({held} more like this suppressed)" if held else ""
        self.logger.warning(message + suffix, *args)
