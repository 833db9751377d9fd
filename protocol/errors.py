"""Errors raised by the wire protocol (all ``ValueError`` subclasses)."""

from __future__ import annotations


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
