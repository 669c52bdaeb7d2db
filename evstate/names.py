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

import functools
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
    if type(name) is str and len(name) <= _CACHED_LENGTH:
        return _cached_problem(name)
    return _str_problem(str(name))  # a long name, or a subclass as the str it holds


def _str_problem(name: str) -> str | None:
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


# Every write checks its scope's names and key several times over (store, writer, view):
# the answer for a usual-length str is cached, so each check after the first is a dict
# lookup. Longer names are checked each time, so hostile input cannot fill the cache
# with big strings.
_CACHED_LENGTH = 256
_cached_problem = functools.lru_cache(maxsize=8192)(_str_problem)


def printable(text: str) -> str:
    """``text`` with control characters and lone surrogates escaped (``\\x1b``), for a terminal.

    Args:
        text: Anything read back from Kafka or the view, e.g. a key stored before names
            were checked.

    Returns:
        The text, safe to print.
    """
    return _UNSAFE.sub(lambda m: repr(m.group())[1:-1], text)
