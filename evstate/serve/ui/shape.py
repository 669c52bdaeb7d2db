"""What the console shows, as pure functions of states and events: no I/O, no HTML.

Secrets are masked here, before anything reaches a template: a ``{"@secret": ...}``
marker (Alchemy v1) or a ``{"__redacted__": ...}`` one (Alchemy v2, sealed by the server)
becomes :data:`MASK`, so neither a secret's plaintext nor its ciphertext is ever written
into a page.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from evstate.model import LOCK_OPS, ChangeEvent, Tree
from evstate.stacks import REDACTED, kind_of

MASK = "••••"
"""What a secret is shown as."""

DIFFED = ("status", "kind", "resourceType", "props", "attr", "output")
"""The parts of a state compared field by field (``data`` is the provider's own; a v2
record's ``resourceType`` and ``attr`` are its kind and output)."""

DEPLOY_GAP = timedelta(minutes=5)
"""Events without a correlation id, by one actor, less than this apart, are one deploy."""


def is_secret(value: object) -> bool:
    """Whether ``value`` is a secret's marker (``{"@secret": ...}``, or v2's
    ``{"__redacted__": ...}``)."""
    return isinstance(value, dict) and ("@secret" in value or REDACTED in value)


def masked(value: Any) -> Any:
    """``value`` with every secret marker replaced by :data:`MASK` (a copy)."""
    if is_secret(value):
        return MASK
    if isinstance(value, dict):
        return {k: masked(v) for k, v in value.items()}
    if isinstance(value, list):
        return [masked(v) for v in value]
    return value


def show(value: Any) -> str:
    """One value as the console prints it: strings as they are, the rest as compact JSON,
    secrets masked."""
    value = masked(value)
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False, sort_keys=True, separators=(", ", ": "))


def _is_leaf(value: object) -> bool:
    # A marker ({"@date": ...}, {"@buffer": ...}, {"@secret": ...}) is one value, and so
    # is an empty object.
    return (
        not isinstance(value, dict)
        or not value
        or REDACTED in value
        or any(k.startswith("@") for k in value)
    )


def flatten(tree: Mapping[str, Any] | None, parts: Iterable[str] = DIFFED) -> dict[str, Any]:
    """The fields of a state as ``{"props.a.b": value}``, leaves unmasked (compare first,
    mask when showing)."""
    out: dict[str, Any] = {}

    def walk(prefix: str, value: Any) -> None:
        if _is_leaf(value):
            out[prefix] = value
            return
        for k, v in value.items():
            walk(f"{prefix}.{k}", v)

    if tree is None:
        return out
    for part in parts:
        if part in tree and tree[part] is not None:
            walk(part, tree[part])
    return out


@dataclass(frozen=True, slots=True)
class FieldChange:
    """One field that differs; ``old``/``new`` are shown values (``None``: absent)."""

    path: str
    old: str | None
    new: str | None
    secret: bool = False


def field_changes(
    before: Mapping[str, Any] | None, after: Mapping[str, Any] | None
) -> list[FieldChange]:
    """Field by field, what differs from ``before`` to ``after`` (either may be None).

    Secrets are compared as stored (a new ciphertext counts as a change) and shown as
    :data:`MASK` on both sides.
    """
    old, new = flatten(before), flatten(after)
    changes = []
    for path in sorted(old.keys() | new.keys()):
        a, b = old.get(path, _ABSENT), new.get(path, _ABSENT)
        if a == b:
            continue
        changes.append(
            FieldChange(
                path,
                None if a is _ABSENT else show(a),
                None if b is _ABSENT else show(b),
                secret=is_secret(a) or is_secret(b),
            )
        )
    return changes


_ABSENT = object()


# -- resources and scopes -------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LastChange:
    """The last event the console saw for a key or a scope."""

    op: str
    version: int
    timestamp: datetime
    actor: str


@dataclass(frozen=True, slots=True)
class ResourceRow:
    """One line of a scope's resource table."""

    id: str
    kind: str
    status: str
    version: int | None
    last: LastChange | None


def resource_row(key: str, tree: Tree, version: int | None, last: LastChange | None) -> ResourceRow:
    """A table row from a stored tree (only plain fields: no secret can be among them)."""
    return ResourceRow(
        id=key,
        kind=kind_of(tree),
        status=str(tree.get("status", "")),
        version=version,
        last=last,
    )


@dataclass(slots=True)
class ScopeNode:
    """A scope in the tree of scopes; ``path`` may hold no state itself (a parent).

    A node that is not ``readable`` is only the way down to scopes that are: a page
    shows its path as text, with nothing of what it holds (``has_states`` is False).
    """

    path: str
    depth: int
    has_states: bool
    readable: bool = True
    children: list[ScopeNode] = field(default_factory=list)


def _everyone(path: str) -> bool:
    return True


def scope_tree(
    paths: Iterable[str], readable: Callable[[str], bool] = _everyone
) -> list[ScopeNode]:
    """The scopes with states that ``readable`` lets through, and every parent of one,
    as a forest sorted by path.

    Args:
        paths: the scopes that hold states.
        readable: whether the viewer may read a scope (a principal's read grants).
    """
    wanted = {p for p in paths if readable(p)}
    every = set(wanted)
    for path in wanted:
        names = path.split("/")
        every.update("/".join(names[:i]) for i in range(1, len(names)))
    nodes = {p: ScopeNode(p, p.count("/"), p in wanted, readable(p)) for p in sorted(every)}
    roots: list[ScopeNode] = []
    for path, node in nodes.items():
        parent = path.rpartition("/")[0]
        (nodes[parent].children if parent in nodes else roots).append(node)
    return roots


def walk_tree(roots: Iterable[ScopeNode]) -> Iterator[ScopeNode]:
    """Every node, parents before children."""
    for node in roots:
        yield node
        yield from walk_tree(node.children)


def nested_scopes(
    path: str, paths: Iterable[str], readable: Callable[[str], bool] = _everyone
) -> list[str]:
    """The scopes directly or deeper inside ``path`` that hold states and ``readable``
    lets through, sorted."""
    prefix = path + "/"
    return sorted(p for p in paths if p.startswith(prefix) and readable(p))


# -- history: deploys -----------------------------------------------------------------


@dataclass(slots=True)
class Change:
    """One event of a scope's history, with what it did to its resource.

    ``fields`` is computed when asked for: a page diffs only the changes it shows.
    """

    event: ChangeEvent
    kind: str  # added, changed, removed, lock
    before: Tree | None = None

    @property
    def fields(self) -> list[FieldChange]:
        """Field by field, what this change did (none for a lock event)."""
        if self.kind == "lock":
            return []
        return field_changes(self.before, self.event.state if self.kind != "removed" else None)


@dataclass(slots=True)
class Deploy:
    """Changes that belong together: one correlation id, or one actor without a gap."""

    correlation_id: str | None
    actor: str
    changes: list[Change] = field(default_factory=list)

    @property
    def started(self) -> datetime:
        return self.changes[0].event.timestamp

    @property
    def ended(self) -> datetime:
        return self.changes[-1].event.timestamp

    def count(self, kind: str) -> int:
        return sum(1 for c in self.changes if c.kind == kind)

    @property
    def actors(self) -> list[str]:
        return sorted({c.event.actor for c in self.changes})


def changes_of(events: Iterable[ChangeEvent]) -> Iterator[Change]:
    """Each event (oldest first) with its kind and its field diff against the key's state
    before it."""
    last: dict[str, Tree] = {}
    for event in events:
        if event.op in LOCK_OPS or not event.key:
            yield Change(event, "lock")
            continue
        before = last.get(event.key)
        if event.op == "DELETE":
            last.pop(event.key, None)
            yield Change(event, "removed", before)
        elif event.state is not None:
            last[event.key] = event.state
            kind = "added" if before is None else "changed"
            yield Change(event, kind, before)


def timeline(events: list[ChangeEvent], first: int, last: int) -> list[Change]:
    """One key's events (oldest first) newest first, from index ``first`` to ``last``
    of that order, each diffed against the event before it: only the shown page's
    diffs are computed."""
    out = []
    for i in range(first, last):
        j = len(events) - 1 - i
        event = events[j]
        before = events[j - 1].state if j > 0 and events[j - 1].op == "SET" else None
        if event.op == "DELETE" or event.state is None:
            out.append(Change(event, "removed", before))
        else:
            kind = "added" if before is None else "changed"
            out.append(Change(event, kind, before))
    return out


def deploys(changes: Iterable[Change], gap: timedelta = DEPLOY_GAP) -> list[Deploy]:
    """Changes grouped into deploys, oldest first.

    Consecutive changes with one correlation id are a deploy; changes without one are
    grouped by actor while less than ``gap`` apart.
    """
    out: list[Deploy] = []
    for change in changes:
        event = change.event
        current = out[-1] if out else None
        if current is not None and (
            (event.correlation_id is not None and event.correlation_id == current.correlation_id)
            or (
                event.correlation_id is None
                and current.correlation_id is None
                and event.actor == current.actor
                and event.timestamp - current.ended < gap
            )
        ):
            current.changes.append(change)
        else:
            out.append(Deploy(event.correlation_id, event.actor, [change]))
    return out
