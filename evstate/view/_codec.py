"""The view's value codec: what a state's record key maps to in the ``default`` family."""

from __future__ import annotations

import struct

from evstate.serde_fast import MAX_DEPTH

__all__ = ["Change", "decode_value", "encode_value"]

Change = tuple[bytes, bytes | None]
"""One record key and its new value; ``None`` deletes the key."""

_VERSION = struct.Struct(">Q")


def encode_value(version: int, state_text: str) -> bytes:
    """The view value of a state: its version (8 bytes big-endian), then its JSON text.

    A text holding :data:`~evstate.serde_fast.MAX_DEPTH` brackets or more (``{`` and
    ``[``), which may nest deeper than serde reads, is stored after one space: the same
    JSON, but the store's one-pass parse (``loads_state(..., bounded=True)``) does not
    start on it and leaves it to the walk that bounds the depth. So the brackets are
    counted once per write, here, and not on every read.
    """
    if len(state_text) >= MAX_DEPTH and state_text.count("{") + state_text.count("[") >= MAX_DEPTH:
        state_text = " " + state_text
    return _VERSION.pack(version) + state_text.encode("utf-8")


def decode_value(raw: bytes) -> tuple[int, bytes]:
    """Split a view value into ``(version, JSON bytes)``."""
    return _VERSION.unpack_from(raw)[0], raw[_VERSION.size :]
