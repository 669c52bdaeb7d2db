"""Alchemy v2 stacks in evstate's terms: pure mapping, no I/O.

Alchemy v2 (npm ``alchemy`` 2.x) keys a record by ``(stack, stage, fqn)`` and stores
whole records of its own shape. evstate keeps them as states of a scope:

- ``(stack, stage)`` → the scope ``Scope("~v2." + stack, stage)``. ``~v2.`` is a reserved
  prefix of the first name: v1's protocol refuses chains that start with it
  (:func:`is_reserved`), so a v1 app can never write into a v2 stack or the other way
  round. The stage is the scope's second name, so each v2 stage is a stage of evstate's
  (its own partition, its own leases), as ``app/stage`` is for v1.
- ``fqn`` → the key :func:`fqn_key`: ``%`` and what keys forbid (``:``, control
  characters) percent-escaped; when the result would still break the key rule (an empty,
  ``.`` or ``..`` ``/``-segment) every ``/`` and ``.`` is escaped too. :func:`key_fqn` is
  plain percent-decoding, so the mapping is one to one.
- The stack's output is the key :data:`OUTPUT_KEY` (``%output``): ``%`` is always escaped
  in an fqn's key, so no fqn maps to it.
- Records are kept whole (every field, unknown ones included). :func:`check_record`
  checks only what the protocol needs: an object, whose ``fqn`` (if any) is the one in
  the URL, holding no :data:`SEALED` marker of its own.
- Secrets: Alchemy sends ``Redacted`` values as ``{"__redacted__": <plaintext>}``.
  :func:`seal_record` replaces each such value by ``{"__evstate_sealed__": payload}``
  (:meth:`evstate.secrets.SecretKeys.seal`, bound to the record's place), and
  :func:`open_record` puts the plaintext back for the client.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Final
from urllib.parse import unquote

from evstate.errors import InvalidRecordError, InvalidScopeError, SealedSecretError
from evstate.model import Scope, Tree
from evstate.names import name_problem
from evstate.secrets import SecretKeys

__all__ = [
    "OUTPUT_KEY",
    "REDACTED",
    "SEALED",
    "STACK_PREFIX",
    "check_record",
    "fqn_key",
    "holds_redacted",
    "id_of",
    "is_reserved",
    "key_fqn",
    "kind_of",
    "open_record",
    "output_record",
    "output_value",
    "place",
    "replaced",
    "seal_record",
    "stack_of",
    "stage_scope",
]

STACK_PREFIX: Final = "~v2."
"""The first scope name of a v2 stack is this plus the stack's name; v1 may not use it."""
OUTPUT_KEY: Final = "%output"
"""The key of a stage's stack output (no fqn's key starts with a bare ``%o``)."""
REDACTED: Final = "__redacted__"
"""Alchemy v2's marker of a secret value, sent in plaintext."""
SEALED: Final = "__evstate_sealed__"
"""evstate's marker of a sealed secret in a stored v2 record; refused in what clients send."""
OUTPUT_KIND: Final = "alchemy.v2.output"
"""``kind`` of the stored tree holding a stack output."""

# Always escaped: '%' (so decoding is unambiguous), ':' (the record key's separator) and
# the characters names.py refuses.
_ESCAPE: Final = re.compile("[%:\x00-\x1f\x7f-\x9f]")
# Escaped as well when the key would otherwise have a bad '/'-segment.
_ESCAPE_PATH: Final = re.compile("[%:/.\x00-\x1f\x7f-\x9f]")


def _pct(match: re.Match[str]) -> str:
    return "".join(f"%{b:02X}" for b in match.group().encode("utf-8"))


def _stack_name(what: str, name: object) -> str:
    problem = name_problem(name)
    if problem is None and isinstance(name, str) and "/" in name:
        problem = "contains '/'"
    if problem is not None:
        raise InvalidScopeError(
            f"invalid {what} name {name!r}: it {problem}; a {what} name is a non-empty "
            "string without '/', ':' or control characters"
        )
    assert isinstance(name, str)
    return name


def stage_scope(stack: str, stage: str) -> Scope:
    """The scope holding the records of ``stack`` at ``stage``.

    Raises:
        InvalidScopeError: a name is empty, holds ``/``, ``:`` or a control character,
            or is ``.``/``..``.
    """
    return Scope(STACK_PREFIX + _stack_name("stack", stack), _stack_name("stage", stage))


def stack_of(path: str) -> tuple[str, str] | None:
    """``(stack, stage)`` of a scope path made by :func:`stage_scope`, else None."""
    if not path.startswith(STACK_PREFIX):
        return None
    first, sep, stage = path[len(STACK_PREFIX) :].partition("/")
    if not sep or not first or not stage or "/" in stage:
        return None
    return first, stage


def is_reserved(chain: Iterable[object]) -> bool:
    """Whether a scope chain lies in the v2 namespace (its first name starts ``~v2.``)."""
    first = next(iter(chain), None)
    return isinstance(first, str) and first.startswith(STACK_PREFIX)


def fqn_key(fqn: str) -> str:
    """The key an fqn is stored under (see the module's docstring).

    Raises:
        InvalidRecordError: an empty fqn, or one holding a lone surrogate.
    """
    if not isinstance(fqn, str) or not fqn:
        raise InvalidRecordError(f"a resource fqn must be a non-empty string, got {fqn!r}")
    try:
        fqn.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidRecordError(f"the fqn {fqn!r} is not valid Unicode") from None
    key = _ESCAPE.sub(_pct, fqn)
    return key if name_problem(key) is None else _ESCAPE_PATH.sub(_pct, fqn)


def key_fqn(key: str) -> str:
    """The fqn stored under ``key``: the inverse of :func:`fqn_key`."""
    return unquote(key, errors="strict")


def place(stack: str, stage: str, key: str) -> bytes:
    """What a sealed secret is bound to: its stack, stage and key (associated data)."""
    return "\x00".join(("evstate.v2", stack, stage, key)).encode("utf-8")


def check_record(fqn: str, tree: object) -> Tree:
    """Refuse a resource record the protocol cannot keep; return it unchanged otherwise.

    Args:
        fqn: the fqn of the URL.
        tree: the decoded body.

    Raises:
        InvalidRecordError: not a JSON object; a ``fqn`` field that is not the URL's; a
            ``__evstate_sealed__`` key anywhere (evstate's own marker).
    """
    if not isinstance(tree, dict):
        raise InvalidRecordError(
            f"a resource record must be a JSON object, got {type(tree).__name__}"
        )
    if "fqn" in tree and tree["fqn"] != fqn:
        raise InvalidRecordError(
            f"the record's fqn {json.dumps(tree['fqn'])[:200]} is not the fqn of the URL "
            f"{json.dumps(fqn)[:200]}"
        )
    _check_unsealed(tree)
    return tree


def output_record(value: Any) -> Tree:
    """The stored tree of a stack output (any JSON value).

    Raises:
        InvalidRecordError: the value holds ``__evstate_sealed__`` (evstate's marker).
    """
    _check_unsealed(value)
    return {"kind": OUTPUT_KIND, "output": value}


def output_value(tree: Tree) -> Any:
    """The stack output held by a tree from :func:`output_record`."""
    return tree.get("output")


def _check_unsealed(value: Any) -> None:
    if _holds(value, SEALED):
        raise InvalidRecordError(
            f"{SEALED!r} is evstate's marker of a sealed secret; a record may not hold it"
        )


def holds_redacted(tree: Any) -> bool:
    """Whether a record holds any ``__redacted__`` value (a secret to seal)."""
    return _holds(tree, REDACTED)


def _holds(node: Any, name: str) -> bool:
    stack = [node]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            if name in item:
                return True
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return False


def _map(node: Any, change: Callable[[Any], Any]) -> Any:
    """A copy of ``node`` with every value under a ``__redacted__`` key passed to ``change``."""
    if isinstance(node, dict):
        return {k: change(v) if k == REDACTED else _map(v, change) for k, v in node.items()}
    if isinstance(node, list):
        return [_map(v, change) for v in node]
    return node


def seal_record(tree: Tree, keys: SecretKeys, where: bytes, previous: Tree | None = None) -> Tree:
    """A copy of ``tree`` whose ``__redacted__`` values are sealed with ``keys``.

    A value that ``previous`` (the record stored at the same place) already holds, sealed
    with the current key, keeps its payload: an unchanged secret stays the same bytes, so
    the history and its diffs show it unchanged. Anything else gets a fresh IV.

    Args:
        tree: a record checked by :func:`check_record`.
        keys: the server's secret keys; the current one seals.
        where: :func:`place` of the record.
        previous: the stored record at ``where``, if any.

    Raises:
        InvalidRecordError: the record is nested too deeply to walk.
    """
    known: dict[bytes, Any] = {}
    for payload in _payloads(previous):
        if isinstance(payload, dict) and payload.get("kid") == keys.current:
            try:
                known.setdefault(keys.open(payload, where), payload)
            except SealedSecretError:
                continue

    def seal(value: Any) -> Any:
        text = json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
        return {SEALED: known.get(text) or keys.seal(text, where)}

    try:
        sealed: Tree = _map(tree, seal)
    except RecursionError:
        raise InvalidRecordError("the record is nested too deeply") from None
    return sealed


def _payloads(tree: Any) -> list[Any]:
    """Every sealed payload in a stored record."""
    found = []
    stack = [tree]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            if len(item) == 1 and SEALED in item:
                found.append(item[SEALED])
            else:
                stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return found


def open_record(tree: Tree, keys: SecretKeys | None, where: bytes) -> Tree:
    """A copy of a stored record with every sealed secret opened (the inverse of
    :func:`seal_record`); ``tree`` itself when it holds none.

    Raises:
        SealedSecretError: a sealed secret and no keys, an unknown key id, or a payload
            that does not open here (altered, or moved from another record).
    """
    if not _holds(tree, SEALED):
        return tree

    def unseal(value: Any) -> Any:
        if not (isinstance(value, dict) and len(value) == 1 and SEALED in value):
            return value  # stored as sent (a server allowed to keep plaintext)
        if keys is None:
            raise SealedSecretError(
                "a stored record holds sealed secrets but the server has no secret keys "
                "(EVSTATE_SECRET_KEYS or --secret-key-file)"
            )
        return json.loads(keys.open(value[SEALED], where))

    opened: Tree = _map(tree, unseal)
    return opened


def kind_of(tree: Tree) -> str:
    """What a stored tree is, for people: a v1 state's ``kind``, a v2 resource's
    ``resourceType``, a v2 action's ``actionType`` (``action`` when it has none)."""
    for field in ("resourceType", "actionType", "kind"):
        value = tree.get(field)
        if isinstance(value, str):
            return value
    return ""


def id_of(key: str, tree: Tree) -> str:
    """The id a person knows a stored tree by: a v2 record's ``fqn``, a v1 state's ``id``,
    else the key."""
    for field in ("fqn", "id"):
        value = tree.get(field)
        if isinstance(value, str):
            return value
    return key


def replaced(trees: Mapping[str, Tree]) -> list[str]:
    """The keys of the records still in replacement cleanup (``status`` ``replaced``),
    sorted; the stack output is never one."""
    return sorted(k for k, t in trees.items() if k != OUTPUT_KEY and t.get("status") == "replaced")
