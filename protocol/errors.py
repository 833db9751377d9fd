"""Errors raised by the wire protocol (all ``ValueError`` subclasses), and a log for the messages
that raise them which a flood of bad input cannot flood."""

from __future__ import annotations

import logging
import time


class ProtocolError(ValueError):
    """Base class: a message or value that the protocol does not allow. The text says why."""


class MalformedMessage(ProtocolError):
    """Not msgpack, not the expected shape (array length) or a field of the wrong type."""


class UnsupportedVersion(ProtocolError):
    """A message of a protocol version this implementation does not speak."""


class MessageTooLarge(ProtocolError):
    """A message longer than ``MAX_MESSAGE_BYTES``."""


class InvalidField(ProtocolError):
    """A well-typed field with a value out of range: bad size, unknown codec, NaN, ..."""


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
