"""The one rule for scope names and keys: what a name may hold. Pure, no I/O.

A scope name or key becomes part of a record key, a RocksDB key, a file path (Alchemy's
state folders) and lines on a terminal, so it is refused when it is:

- not a str, or empty;
- holding ``:`` (it separates scope path and id in record keys);
- holding an empty ``/``-separated segment (``/abs``, ``a//b``, ``a/``), or a segment
  ``.`` or ``..`` (a path that leaves its folder);
- holding a control character: C0 (``\\x00``-``\\x1f``), DEL, C1 (``\\x80``-``\\x9f``),
  which a terminal may act on (``ESC`` sets its title), or a lone surrogate, which has
  no UTF-8 form.

:mod:`evstate.model` (scope names) and :mod:`evstate.keys` (ids) both apply it; it sits
below them so neither imports the other for it.
"""

from __future__ import annotations

import re

__all__ = ["name_problem", "printable"]

# C0, DEL, C1 and the surrogate range (only lone surrogates reach a Python str).
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")


def name_problem(name: object) -> str | None:
    """What is wrong with ``name`` as a scope name or key, or None when it is fine.

    Args:
        name: The candidate.

    Returns:
        A short phrase (``"is empty"``, ``"contains ':'"``, ...) to put after the name in
        an error message, or ``None``.
    """
    if not isinstance(name, str):
        return f"must be a str, not {type(name).__name__}"
    if not name:
        return "is empty"
    if ":" in name:
        return "contains ':'"
    if found := _UNSAFE.search(name):
        char = found.group()
        kind = "a lone surrogate" if "\ud800" <= char <= "\udfff" else "a control character"
        return f"contains {kind} ({char!r})"
    for segment in name.split("/"):
        if not segment:
            return "has an empty '/'-separated segment"
        if segment in (".", ".."):
            return f"has a {segment!r} segment"
    return None


def printable(text: str) -> str:
    """``text`` with control characters and lone surrogates escaped (``\\x1b``), for a terminal.

    Args:
        text: Anything read back from Kafka or the view, e.g. a key stored before names
            were checked.

    Returns:
        The text, safe to print.
    """
    return _UNSAFE.sub(lambda m: repr(m.group())[1:-1], text)
