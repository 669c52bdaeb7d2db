"""The happy paths of :mod:`evstate.serde`: no path built, no cycle tracked, no message.

Every state written or read goes through here first, so each step is tested in C where
it can be (``frozenset.issuperset(map(type, values))`` over a whole container) and a
Python call is paid only per container or special value, never per plain item.

* :func:`tree_of` and :func:`state_tree` serialize values of exact types. Anything else
  (a subclass, a bad value, a refusal, a secret without a password, the depth bound
  reached) raises :class:`Unusual`, and serde's checked walk does the whole value again:
  it normalises what is odd and raises the error naming the path. A cycle always ends at
  :data:`MAX_DEPTH`, where the checked walk tells it from plain depth.
* :func:`parse` runs the C JSON scanner directly, plain (:data:`SCAN_PLAIN`) or reviving
  markers as each object is parsed (:data:`SCAN_REVIVING`, for the scope set in
  :data:`reading`; :data:`SCAN_DEFERRING` stops at a secret instead). Any error is for
  serde to redo on the two-step path, which raises its own error, with the path.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any

from evstate.errors import SerdeError
from evstate.markers import Secret, encode_buffer, encrypt_secret, format_date, from_marker
from evstate.markers import parse_buffer as _parse_buffer
from evstate.markers import parse_date as _parse_date
from evstate.model import Scope, State

__all__ = [
    "LEAVES",
    "MARKERS",
    "MARKER_KEYS",
    "MAX_DEPTH",
    "PLAIN",
    "SCAN_DEFERRING",
    "SCAN_PLAIN",
    "SCAN_REVIVING",
    "STR_ONLY",
    "SecretAhead",
    "Unusual",
    "parse",
    "reading",
    "state_tree",
    "tree_of",
]

# Alchemy's markers, in the order they are looked for (the first present decides).
MARKERS = ("@secret", "@date", "@scope", "@buffer")
MARKER_KEYS = frozenset(MARKERS)

# JSON from Kafka or a caller could nest arbitrarily; a bound turns "too deep" into a
# SerdeError naming the path rather than a RecursionError from deep inside.
MAX_DEPTH = 200

# Exact types a serialized tree holds as they are. Sets, so a whole container's types are
# tested in C: frozenset.issuperset(map(type, values)).
PLAIN = frozenset((str, int, bool, type(None)))  # serialize: passed through (floats are checked)
LEAVES = PLAIN | {float}  # deserialize: every JSON leaf json.loads makes
STR_ONLY = frozenset((str,))


class Unusual(Exception):
    """Off the fast path: serde's checked walk does the value again (never raised out of serde)."""


# One function per exact type, (scope, value, depth) -> the value's tree; _FAST is filled
# once they are defined.
_Fast = Callable[[Scope, Any, int], Any]
_FAST: dict[type, _Fast] = {}


def tree_of(scope: Scope, value: object) -> Any:
    """``serialize(scope, value)`` when every value in it is of an exact, usual type.

    Raises:
        Unusual: for anything else.
    """
    return _FAST.get(type(value), _unusual)(scope, value, 0)


def state_tree(scope: Scope, state: State) -> dict[str, Any]:
    """``serialize_state(scope, state)`` for a validated state of usual values.

    Raises:
        Unusual: for anything else.
    """
    data, props, old_props, output = state.data, state.props, state.old_props, state.output
    fast = _FAST.get  # by exact type: a dict subclass takes the checked walk
    # Spelled out (every write calls it), in the order of State.to_json.
    tree: dict[str, Any] = {
        "status": state.status,
        "kind": state.kind,
        "id": state.id,
        "fqn": state.fqn,
        "seq": state.seq,
        "data": fast(type(data), _unusual)(scope, data, 0),
        "props": None if props is None else fast(type(props), _unusual)(scope, props, 0),
    }
    if old_props is not None:
        tree["oldProps"] = fast(type(old_props), _unusual)(scope, old_props, 0)
    tree["output"] = None if output is None else fast(type(output), _unusual)(scope, output, 0)
    return tree


def _dict(scope: Scope, items: dict[Any, Any], depth: int) -> dict[str, Any]:
    if (
        depth >= MAX_DEPTH
        or not STR_ONLY.issuperset(map(type, items))
        or "@secret" in items
        or "@date" in items
        or "@scope" in items
        or "@buffer" in items
    ):
        raise Unusual
    out = items.copy()
    if not PLAIN.issuperset(map(type, items.values())):
        for key, item in items.items():
            kind = type(item)
            if kind not in PLAIN:
                out[key] = _FAST.get(kind, _unusual)(scope, item, depth + 1)
    return out


def _list(scope: Scope, seq: list[Any] | tuple[Any, ...], depth: int) -> list[Any]:
    if depth >= MAX_DEPTH:
        raise Unusual
    copy = list(seq)
    if not PLAIN.issuperset(map(type, seq)):
        for index, item in enumerate(seq):
            kind = type(item)
            if kind not in PLAIN:
                copy[index] = _FAST.get(kind, _unusual)(scope, item, depth + 1)
    return copy


def _float(scope: Scope, value: float, depth: int) -> float:
    if math.isfinite(value):
        return value
    raise Unusual


def _date(scope: Scope, value: datetime, depth: int) -> dict[str, str]:
    try:
        return {"@date": format_date(value, "")}
    except SerdeError:
        raise Unusual from None


def _bytes(scope: Scope, value: bytes, depth: int) -> dict[str, str]:
    return {"@buffer": encode_buffer(value)}


def _scope(scope: Scope, value: Scope, depth: int) -> dict[str, None]:
    return {"@scope": None}


def _secret(scope: Scope, value: Secret, depth: int) -> dict[str, Any]:
    try:
        return {"@secret": encrypt_secret(scope, value, "")}
    except SerdeError:
        raise Unusual from None  # again on the checked walk, for the path in the message


def _unusual(scope: Scope, value: Any, depth: int) -> Any:
    raise Unusual


_FAST.update(
    {
        dict: _dict,
        list: _list,
        tuple: _list,
        float: _float,
        datetime: _date,
        bytes: _bytes,
        Scope: _scope,
        Secret: _secret,
    }
)


# The scope a reviving parse reads for, seen by the parser's hook (which is handed only
# the dict); a context variable keeps concurrent reads in threads and tasks apart.
reading: ContextVar[Scope] = ContextVar("evstate.serde.reading")
_fromisoformat = datetime.fromisoformat


class SecretAhead(Exception):
    """A deferring parse met a secret: the caller derives its key off the event loop first.

    Not an :class:`~evstate.errors.EvstateError`: it never leaves evstate.
    """


def _decrypt(node: dict[str, Any]) -> Any:
    return from_marker(reading.get(), node, "")


def _defer(node: dict[str, Any]) -> Any:
    raise SecretAhead


def _reviver(secret: Callable[[dict[str, Any]], Any]) -> Callable[[dict[str, Any]], Any]:
    """The parser's object hook: a marker dict becomes its live value as the text is parsed.

    As :func:`~evstate.markers.from_marker` (the first present of ``@secret``, ``@date``,
    ``@scope``, ``@buffer`` decides), with the common cases first: it runs once per JSON
    object, and most objects hold no marker. A dict holding ``@secret`` goes to ``secret``.
    """

    def revive(node: dict[str, Any]) -> Any:
        if "@date" in node:
            if "@secret" not in node:
                text = node["@date"]
                if type(text) is str:
                    # What parse_date does, inline for the text Alchemy and evstate write
                    # ("…Z": UTC); anything else takes parse_date.
                    try:
                        parsed = _fromisoformat(text)
                    except ValueError:
                        pass
                    else:
                        if parsed.tzinfo is UTC:
                            return parsed
                return _parse_date(text, "")
        elif "@scope" in node:
            if "@secret" not in node:
                return reading.get()
        elif "@buffer" in node:
            if "@secret" not in node:
                return _parse_buffer(node["@buffer"], "")
        elif "@secret" not in node:
            return node
        return secret(node)

    return revive


# One scanner each for every call: building one costs more than a parse. They are called
# as JSONDecoder.decode calls them, without its check for whitespace around the value
# (stored text has none; text that has takes json.loads). SCAN_DEFERRING raises
# SecretAhead at the first secret, so no key is derived inside it.
_Scan = Callable[[str, int], tuple[Any, int]]
SCAN_PLAIN: _Scan = json.JSONDecoder().scan_once  # type: ignore[attr-defined]
SCAN_REVIVING: _Scan = json.JSONDecoder(object_hook=_reviver(_decrypt)).scan_once  # type: ignore[attr-defined]
SCAN_DEFERRING: _Scan = json.JSONDecoder(object_hook=_reviver(_defer)).scan_once  # type: ignore[attr-defined]


def parse(scan: _Scan, text: str) -> Any:
    """``json.loads(text)`` by ``scan``.

    Raises:
        ValueError: ``text`` is not one JSON value with nothing around it (whitespace
            included: ``json.loads`` tells which).
    """
    try:
        tree, end = scan(text, 0)
    except StopIteration:  # no JSON value at the start
        raise ValueError("no JSON value at the start") from None
    if end != len(text):
        raise ValueError("more than one JSON value")
    return tree
