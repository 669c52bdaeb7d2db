"""Live values ↔ JSON-safe trees, with Alchemy's markers.

==========================  ==========================================
Python value                tree
==========================  ==========================================
``datetime`` (tz-aware)     ``{"@date": "2024-01-02T03:04:05.678Z"}``
``bytes``/``bytearray``     ``{"@buffer": "<standard base64>"}``
:class:`~evstate.model.Scope`  ``{"@scope": null}`` (reads back as the store's scope)
:class:`Secret` (str)       ``{"@secret": {"version": "v1", "ciphertext", "iv", "salt", "tag"}}``
:class:`Secret` (other)     ``{"@secret": {"data": {"version": "v1", ...}}}``
dict (str keys), list,      themselves (a tuple becomes a list)
tuple, str, int, finite
float, bool, None
==========================  ==========================================

A secret's plaintext is encrypted with the scope's password by :mod:`evstate.secrets`
(AES-256-GCM, as Alchemy does); a non-string secret is encrypted as its JSON text, as
Alchemy's ``JSON.stringify`` would write it. Plaintext never appears in a tree.

Anything else is refused with :class:`~evstate.errors.UnserializableError` naming its path
(``props.db.password``, ``items[3]``), as are cycles. Keys like ``"Symbol(name)"`` are
ordinary strings here and pass through.
"""

from __future__ import annotations

import json
import math
import re
from datetime import datetime
from itertools import compress, count
from operator import not_
from typing import Any

from evstate import secrets
from evstate import serde_fast as _fast
from evstate.errors import (
    EvstateError,
    InvalidStateError,
    SerdeError,
    UnserializableError,
)
from evstate.markers import Secret, encode_buffer
from evstate.markers import TreePath as _Path
from evstate.markers import encrypt_secret as _encrypt
from evstate.markers import format_date as _format_date
from evstate.markers import from_marker as _from_marker
from evstate.markers import key_path as _key_path
from evstate.markers import parse_buffer as _parse_buffer
from evstate.markers import parse_date as _parse_date
from evstate.markers import render_path as _render
from evstate.markers import where as _where
from evstate.model import Scope, State
from evstate.serde_fast import LEAVES as _LEAVES
from evstate.serde_fast import MARKER_KEYS as _MARKER_KEYS
from evstate.serde_fast import MARKERS, SecretAhead
from evstate.serde_fast import MAX_DEPTH as _MAX_DEPTH
from evstate.serde_fast import PLAIN as _PLAIN
from evstate.serde_fast import STR_ONLY as _STR_ONLY

__all__ = [
    "MARKERS",
    "Secret",
    "SecretAhead",
    "check_tree",
    "deserialize",
    "deserialize_state",
    "loads_state",
    "serialize",
    "serialize_state",
]

# A lone surrogate has no UTF-8 form: a tree holding one could never be sent.
_SURROGATE = re.compile("[\ud800-\udfff]")

_IS_LEAF = _LEAVES.__contains__


def serialize(scope: Scope, value: object, *, path: str = "") -> Any:
    """Turn a live value into a JSON-safe tree with Alchemy's markers.

    Args:
        scope: The scope the value belongs to (secrets will need its password).
        value: The value to serialize.
        path: The name of ``value`` in error messages, e.g. ``"props"``.

    Returns:
        A tree of dict/list/str/int/float/bool/None.

    Raises:
        UnserializableError: A value has no JSON form (socket, lock, set, naive datetime,
            non-finite float, non-str dict key, a key reserved for markers), or there is
            a cycle; the message and ``path`` attribute name where.
        SecretError: A :class:`Secret` is met and ``scope`` has no password; the message
            names where.
    """
    if type(value) in _PLAIN:
        return value
    try:
        return _fast.tree_of(scope, value)
    except _fast.Unusual:
        return _serialize(scope, value, path, set(), 0)


def _serialize(scope: Scope, value: object, path: _Path, active: set[int], depth: int) -> Any:
    kind = type(value)
    if kind in _PLAIN:
        return value
    if kind is dict or kind is list or kind is tuple:
        return _serialize_container(scope, value, path, active, depth)  # type: ignore[arg-type]
    if isinstance(value, float):
        if not math.isfinite(value):
            raise UnserializableError(
                f"non-finite float {value!r} at {_where(path)} has no JSON form", path=_render(path)
            )
        return float(value)
    if isinstance(value, bool | int):
        # Subclasses such as IntEnum: keep the number, drop the class.
        return value if isinstance(value, bool) else int(value)
    if isinstance(value, str):
        return str.__str__(value)
    if isinstance(value, datetime):
        return {"@date": _format_date(value, path)}
    if isinstance(value, bytes | bytearray | memoryview):
        return {"@buffer": encode_buffer(bytes(value))}
    if isinstance(value, Scope):
        return {"@scope": None}
    if isinstance(value, Secret):
        return {"@secret": _encrypt(scope, value, path)}
    if isinstance(value, dict | list | tuple):
        return _serialize_container(scope, value, path, active, depth)
    raise UnserializableError(
        f"{type(value).__module__}.{type(value).__qualname__} at {_where(path)} "
        "cannot be serialized",
        path=_render(path),
    )


def _serialize_container(
    scope: Scope,
    value: dict[Any, Any] | list[Any] | tuple[Any, ...],
    path: _Path,
    active: set[int],
    depth: int,
) -> Any:
    # Only containers on the current path count: the same list shared twice is fine.
    ident = id(value)
    if ident in active:
        raise UnserializableError(
            f"cycle at {_where(path)}: a container contains itself", path=_render(path)
        )
    if depth >= _MAX_DEPTH:
        raise UnserializableError(
            f"value at {_where(path)} is nested deeper than {_MAX_DEPTH} levels", path=_render(path)
        )
    if type(value) is dict:
        # The common case in one C-speed look: str keys, none a marker. Then the items need
        # no per-key checks, and when every value is plain too the copy is the result.
        if _STR_ONLY.issuperset(map(type, value)) and _MARKER_KEYS.isdisjoint(value):
            if _PLAIN.issuperset(map(type, value.values())):
                return value.copy()
            active.add(ident)
            try:
                return {
                    key: item
                    if type(item) in _PLAIN
                    else _serialize(scope, item, (path, key), active, depth + 1)
                    for key, item in value.items()
                }
            finally:
                active.discard(ident)
    elif not isinstance(value, dict):
        if _PLAIN.issuperset(map(type, value)):
            return list(value)
        active.add(ident)
        try:
            return [
                item
                if type(item) in _PLAIN
                else _serialize(scope, item, (path, index), active, depth + 1)
                for index, item in enumerate(value)
            ]
        finally:
            active.discard(ident)
    # A dict with a non-str key, a reserved key, or of a dict subclass: key by key, so the
    # first bad key or value (in order) is the one reported.
    active.add(ident)
    try:
        out: dict[str, Any] = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise UnserializableError(
                    f"dict key {key!r} at {_where(path)} is not a str", path=_render(path)
                )
            sub = _key_path(path, key)
            if key in _MARKER_KEYS:
                # On read the dict would turn into a marker value; refuse rather
                # than return something else than was stored.
                raise UnserializableError(
                    f"dict key {key!r} at {_where(path)} is reserved for serde markers",
                    path=_render(sub),
                )
            out[str.__str__(key)] = _serialize(scope, item, sub, active, depth + 1)
        return out
    finally:
        active.discard(ident)


def deserialize(scope: Scope, tree: object, *, path: str = "") -> Any:
    """Turn a JSON-safe tree back into live values; the reverse of :func:`serialize`.

    Markers are recognised as Alchemy does: by the presence of the marker key, in the
    order ``@secret``, ``@date``, ``@scope``, ``@buffer``. ``{"@scope": null}`` reads back
    as ``scope`` itself.

    Args:
        scope: The scope of the store reading the tree.
        tree: A tree of dict/list/str/int/float/bool/None.
        path: The name of ``tree`` in error messages, e.g. ``"props"``.

    Returns:
        The live value.

    Raises:
        SerdeError: A marker is malformed, or the tree holds a non-JSON value or is
            nested too deeply; the message names the path.
        SecretError: A secret could not be decrypted.
    """
    return _deserialize(scope, tree, path, 0)


def _deserialize(scope: Scope, tree: object, path: _Path, depth: int) -> Any:
    kind = type(tree)
    if kind in _LEAVES:
        return tree
    if depth >= _MAX_DEPTH:
        raise SerdeError(f"tree at {_where(path)} is nested deeper than {_MAX_DEPTH} levels")
    if kind is dict:
        node: dict[Any, Any] = tree  # type: ignore[assignment]
        if not _MARKER_KEYS.isdisjoint(node):
            return _from_marker(scope, node, path)
        if _STR_ONLY.issuperset(map(type, node)):
            # The common case, each test in C: copy, then redo only what is not a leaf.
            live = node.copy()
            if not _LEAVES.issuperset(map(type, node.values())):
                for key in compress(node, map(not_, map(_IS_LEAF, map(type, node.values())))):
                    live[key] = _deserialize(scope, node[key], (path, key), depth + 1)
            return live
        out: dict[str, Any] = {}
        for key, item in node.items():
            if not isinstance(key, str):
                raise SerdeError(f"dict key {key!r} at {_where(path)} is not a str")
            out[key] = _deserialize(scope, item, (path, key), depth + 1)
        return out
    if kind is list:
        items: list[Any] = tree  # type: ignore[assignment]
        copy = items.copy()
        if not _LEAVES.issuperset(map(type, items)):
            for index in compress(count(), map(not_, map(_IS_LEAF, map(type, items)))):
                copy[index] = _deserialize(scope, items[index], (path, index), depth + 1)
        return copy
    raise SerdeError(f"{kind.__name__} at {_where(path)} is not part of a JSON tree")


# (State attribute, its name in paths): paths use Python names, as callers see them.
_VALUE_FIELDS = ("data", "props", "old_props", "output")
_JSON_VALUE_FIELDS = (
    ("data", "data"),
    ("props", "props"),
    ("oldProps", "old_props"),
    ("output", "output"),
)


def check_tree(tree: object) -> None:
    """Refuse a serialized state whose markers would not decode; needs no password.

    What :func:`deserialize_state` would refuse for the tree's own sake (a malformed
    ``@date``, ``@buffer`` or ``@secret``, a marker in place of a whole field, a value
    nested too deeply, a lone surrogate) is refused here, so a tree stored after this
    check can always be read back by a reader with the right password. The tree's
    fields and types are :meth:`State.from_json`'s to check.

    Args:
        tree: A state tree with Alchemy's field names, e.g. as sent to ``evstate serve``.

    Raises:
        SerdeError: a marker is malformed (the message names its path, e.g.
            ``props.created``), a field is a marker rather than an object, or a string
            holds a lone surrogate.
        SecretError: a secret is in Alchemy's legacy libsodium format.
    """
    if not isinstance(tree, dict):
        return
    for json_name, name in _JSON_VALUE_FIELDS:
        value = tree.get(json_name)
        if isinstance(value, dict) and any(marker in value for marker in MARKERS):
            raise SerdeError(f"state field {name!r} is a serde marker, not an object")
        if value is not None:
            _check(value, name, 0)


def _check(tree: object, path: _Path, depth: int) -> None:
    if type(tree) is str:
        if _SURROGATE.search(tree):
            raise SerdeError(f"string at {_where(path)} holds a lone surrogate (not UTF-8)")
        return
    if type(tree) in _LEAVES:
        return
    if depth >= _MAX_DEPTH:
        raise SerdeError(f"tree at {_where(path)} is nested deeper than {_MAX_DEPTH} levels")
    if type(tree) is dict:
        if "@secret" in tree:
            payload = tree["@secret"]
            if isinstance(payload, dict) and "data" in payload:
                payload = payload["data"]
            secrets.check_payload(payload, path=_render(path))
        elif "@date" in tree:
            _parse_date(tree["@date"], path)
        elif "@scope" in tree:
            pass
        elif "@buffer" in tree:
            _parse_buffer(tree["@buffer"], path)
        else:
            for key, item in tree.items():
                if not isinstance(key, str) or _SURROGATE.search(key):
                    raise SerdeError(f"dict key {key!r} at {_where(path)} is not UTF-8 text")
                _check(item, _key_path(path, key), depth + 1)
        return
    if type(tree) is list:
        for index, item in enumerate(tree):
            _check(item, (path, index), depth + 1)
        return
    raise SerdeError(f"{type(tree).__name__} at {_where(path)} is not part of a JSON tree")


def serialize_state(scope: Scope, state: State) -> dict[str, Any]:
    """Return ``state.to_json()`` with data, props, old_props and output serialized.

    Args:
        scope: The scope the state belongs to.
        state: The state.

    Returns:
        A JSON-safe dict with Alchemy's field names.

    Raises:
        InvalidStateError: The state has fields of the wrong type or an unknown status.
        UnserializableError: A value has no JSON form; the path starts at the field,
            e.g. ``props.db.password``.
    """
    state.validate()
    try:
        return _fast.state_tree(scope, state)
    except _fast.Unusual:
        tree = state.to_json()
        for name in _VALUE_FIELDS:
            value = getattr(state, name)
            if value is not None:
                json_name = "oldProps" if name == "old_props" else name
                tree[json_name] = serialize(scope, value, path=name)
    return tree


def deserialize_state(scope: Scope, tree: object, *, markers: bool = True) -> State:
    """Build a live :class:`State` from a serialized tree; the reverse of :func:`serialize_state`.

    The returned state's ``output["Scope"]`` is ``scope`` when output is a dict, as the
    store contract promises.

    Args:
        scope: The scope of the store reading the state.
        tree: A dict with Alchemy's field names.
        markers: False when the caller knows the tree holds no marker (no key starting
            with ``@``): its values are then final as they are, and the walk is skipped.

    Returns:
        The state.

    Raises:
        InvalidStateError: A field is missing, of the wrong type, or deserializes to
            something other than a dict.
        SerdeError: A marker inside is malformed.
        SecretError: A secret could not be decrypted.
    """
    state = State.from_json(tree)
    for name in _VALUE_FIELDS if markers else ():
        value = getattr(state, name)
        if value is None:
            continue
        live = deserialize(scope, value, path=name)
        # A top-level marker ({"@date": ...}) would replace the dict with a scalar.
        if not isinstance(live, dict):
            raise InvalidStateError(
                f"state field {name!r} deserialized to {type(live).__name__}, not a dict"
            )
        setattr(state, name, live)
    if isinstance(state.output, dict):
        state.output["Scope"] = scope
    return state


def loads_state(
    scope: Scope, text: str, *, defer_secrets: bool = False, bounded: bool = False
) -> State:
    """Parse a stored state's JSON text into a live :class:`State`, in one pass.

    The same as ``deserialize_state(scope, json.loads(text))``, result and errors alike,
    but markers become values while the text is parsed, so no walk over the tree follows.

    Args:
        scope: The scope of the store reading the state.
        text: The state's JSON text, as stored.
        defer_secrets: Decrypt no secret: raise :class:`SecretAhead` instead, so that async
            code derives the keys in a worker thread (``secrets.warm``) and then reads the
            state with :func:`deserialize_state`. This costs a state without secrets
            nothing, where looking for secrets first would cost a pass over the text.
        bounded: The caller vouches that ``text`` holds fewer than ``MAX_DEPTH`` brackets
            or starts with whitespace (the view stores deeper texts so: see
            ``evstate.view.encode_value``); otherwise they are counted here.

    Returns:
        The state, with ``output["Scope"]`` set to ``scope`` when output is a dict.

    Raises:
        ValueError: ``text`` is not JSON (``json.JSONDecodeError``, as ``json.loads``).
        InvalidStateError, SerdeError, SecretError: as :func:`deserialize_state`.
        SecretAhead: ``defer_secrets`` and the text holds a ``@secret`` marker.
    """
    # Neither scan knows how deep it is: below _MAX_DEPTH brackets no depth limit can be
    # hit, and a text with more (or with whitespace first) takes the two-step path.
    if bounded or text.count("{") + text.count("[") < _MAX_DEPTH:
        # Without a key starting with "@" (literally or escaped) json.loads is the whole
        # decoding. One-character tests first: they run at memchr speed.
        if ("@" not in text or '"@' not in text) and ("\\" not in text or "\\u0040" not in text):
            try:
                tree = _fast.parse(_fast.SCAN_PLAIN, text)
            except ValueError:
                pass
            else:
                return deserialize_state(scope, tree, markers=False)
            return deserialize_state(scope, json.loads(text))  # json.loads' error, or whitespace
        # On any error the two-step path runs again to raise its own error, with the path.
        # Both give the same result whenever this one succeeds: the hook also revives
        # markers the walk never visits (inside another marker's payload, beside the
        # state's fields), but a payload holding a revived value is refused, and the
        # rest is dropped by both (property-tested).
        token = _fast.reading.set(scope)
        try:
            scan = _fast.SCAN_DEFERRING if defer_secrets else _fast.SCAN_REVIVING
            tree, end = scan(text, 0)  # as _fast.parse, inline
            if end == len(text):
                state = State.from_json(tree)
                if type(state.output) is dict:
                    state.output["Scope"] = scope
                return state
        except (EvstateError, ValueError, RecursionError, StopIteration):
            pass
        finally:
            _fast.reading.reset(token)
    tree = json.loads(text)
    if defer_secrets and secrets.secret_salts(tree):
        raise SecretAhead
    return deserialize_state(scope, tree)
