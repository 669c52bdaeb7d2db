"""The value types every other module speaks: scopes, states, positions and change events.

Pure data, no I/O. Values held in a :class:`State` are already-serialized JSON-safe trees
at this level; :mod:`evstate.serde` turns live values into trees and back.
"""

from __future__ import annotations

import enum
import os
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal, get_args

from evstate.errors import InvalidScopeError, InvalidStateError, ValidationError
from evstate.names import name_problem

__all__ = [
    "CONSISTENCIES",
    "LOCK_OPS",
    "OPS",
    "STATUSES",
    "ChangeEvent",
    "Consistency",
    "Lease",
    "Lifecycle",
    "Op",
    "Position",
    "Scope",
    "State",
    "Status",
    "Tree",
    "new_event_id",
]

Status = Literal["creating", "created", "updating", "updated", "deleting", "deleted"]
STATUSES: tuple[Status, ...] = get_args(Status)

Op = Literal["SET", "DELETE", "LOCK", "UNLOCK", "RENEW", "BREAK"]
LOCK_OPS: frozenset[str] = frozenset({"LOCK", "UNLOCK", "RENEW", "BREAK"})
OPS: tuple[Op, ...] = get_args(Op)

Tree = dict[str, Any]
"""A state as stored: Alchemy's JSON field names, values serialized, secrets encrypted."""

Consistency = Literal["session", "strong", "eventual"]
"""What a read waits for; see ``docs/design.md`` (Consistency)."""
CONSISTENCIES: tuple[Consistency, ...] = get_args(Consistency)


class Lifecycle(enum.Enum):
    """Where a resource (a client, a watcher) is in its life."""

    UNOPENED = "unopened"
    OPEN = "open"
    CLOSED = "closed"


def _check_scope_name(name: object) -> str:
    # The rule (no ':', no '.'/'..' or empty segment, no control character) is names.py's.
    problem = name_problem(name)
    if problem is not None:
        raise InvalidScopeError(
            f"invalid scope name {name!r}: it {problem}; a scope name is a non-empty str "
            "without ':', control characters, or empty, '.' or '..' segments"
        )
    assert isinstance(name, str)
    return name


@dataclass(frozen=True, init=False)
class Scope:
    """A chain of scope names (app, stage, nested scopes), plus the password for secrets.

    The password travels with the scope so serde can decrypt secrets met in it; it takes
    no part in equality, hashing or repr.

    Attributes:
        chain: The scope names, outermost first; at least one.
        password: Password for secrets in this scope, or ``None``.
    """

    chain: tuple[str, ...]
    password: str | None = field(default=None, repr=False, compare=False, hash=False)

    def __init__(self, *names: str, password: str | None = None) -> None:
        """Build a scope from its names.

        Args:
            *names: The scope names, outermost first. Names may contain ``/``.
            password: Password for secrets in this scope.

        Raises:
            InvalidScopeError: No names, or a name that is empty, not a str, has ``:``,
                a control character, or an empty, ``.`` or ``..`` ``/``-segment.
        """
        if not names:
            raise InvalidScopeError("a scope needs at least one name")
        chain = tuple(_check_scope_name(name) for name in names)
        if password is not None and not isinstance(password, str):
            raise InvalidScopeError("a scope's password must be a str or None")
        object.__setattr__(self, "chain", chain)
        object.__setattr__(self, "password", password)

    @property
    def path(self) -> str:
        """The names joined with ``/``: the scope's part of record keys and fqns."""
        return "/".join(self.chain)

    def child(self, name: str) -> Scope:
        """Return the nested scope ``name`` inside this one, keeping the password.

        Args:
            name: The nested scope's name.

        Returns:
            A scope whose chain is this chain plus ``name``.

        Raises:
            InvalidScopeError: ``name`` is empty, not a str, or has ``:``.
        """
        return Scope(*self.chain, name, password=self.password)

    @classmethod
    def parse(cls, path: str, password: str | None = None) -> Scope:
        """Build a scope from a ``/``-separated path such as ``"app/stage/child"``.

        A name that itself contains ``/`` cannot be told apart from two names here;
        build such scopes with the constructor instead.

        Args:
            path: Scope names joined by ``/``.
            password: Password for secrets in this scope.

        Returns:
            The scope.

        Raises:
            InvalidScopeError: ``path`` is not a str, or yields an empty or invalid name.
        """
        if not isinstance(path, str):
            raise InvalidScopeError(f"a scope path must be a str, got {type(path).__name__}")
        return cls(*path.split("/"), password=password)


# (field name in Python, field name in Alchemy's JSON, allowed types, may be None)
_STATE_FIELDS: tuple[tuple[str, str, type, bool], ...] = (
    ("status", "status", str, False),
    ("kind", "kind", str, False),
    ("id", "id", str, False),
    ("fqn", "fqn", str, False),
    ("seq", "seq", int, False),
    ("data", "data", dict, False),
    ("props", "props", dict, True),
    ("old_props", "oldProps", dict, True),
    ("output", "output", dict, True),
)
# Alchemy omits undefined fields when it writes JSON, so these may be absent on read.
_OPTIONAL_JSON_FIELDS = frozenset({"props", "oldProps", "output"})
_STATUS_SET = frozenset(STATUSES)
_DICT_OR_NONE = frozenset((dict, type(None)))
_new = object.__new__


def _check_field(name: str, value: object, kind: type, nullable: bool) -> None:
    if value is None and nullable:
        return
    # bool is an int subclass, but a bool seq is a caller's mistake.
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        wanted = f"{kind.__name__} or None" if nullable else kind.__name__
        raise InvalidStateError(
            f"state field {name!r} must be {wanted}, got {type(value).__name__}"
        )


@dataclass(kw_only=True)
class State:
    """One resource's state, as Alchemy's ``State``.

    Attributes:
        status: One of :data:`STATUSES`.
        kind: The resource kind.
        id: The resource id (the key within its scope).
        fqn: ``"/".join(scope.chain + [id])``.
        seq: Creation order within the scope.
        data: Provider data.
        props: The input props, or ``None``.
        old_props: The props before an update, or ``None``.
        output: The resource's output, or ``None``.
    """

    status: Status
    kind: str
    id: str
    fqn: str
    seq: int
    data: dict[str, Any]
    props: dict[str, Any] | None
    old_props: dict[str, Any] | None = None
    output: dict[str, Any] | None

    def validate(self) -> None:
        """Check every field's type and the status.

        Raises:
            InvalidStateError: A field has the wrong type or the status is unknown;
                the message names the field.
        """
        # Every read and write validates: the common case is one expression of exact types,
        # and anything else (a subclass included) takes the loop, which names the field.
        if (
            type(self.status) is str
            and self.status in _STATUS_SET
            and type(self.kind) is str
            and type(self.id) is str
            and type(self.fqn) is str
            and type(self.seq) is int
            and type(self.data) is dict
            and type(self.props) in _DICT_OR_NONE
            and type(self.old_props) in _DICT_OR_NONE
            and type(self.output) in _DICT_OR_NONE
        ):
            return
        for name, _json_name, kind, nullable in _STATE_FIELDS:
            _check_field(name, getattr(self, name), kind, nullable)
        if self.status not in STATUSES:
            raise InvalidStateError(
                f"state field 'status' is {self.status!r}; expected one of {', '.join(STATUSES)}"
            )

    def to_json(self) -> dict[str, Any]:
        """Return the state with Alchemy's field names (``oldProps`` omitted when ``None``).

        The values are the state's own objects, not copies.

        Returns:
            A dict ready for ``json.dumps`` if the values are serialized trees.
        """
        # Spelled out (every write calls it), in _STATE_FIELDS' order: the order of the JSON.
        tree: dict[str, Any] = {
            "status": self.status,
            "kind": self.kind,
            "id": self.id,
            "fqn": self.fqn,
            "seq": self.seq,
            "data": self.data,
            "props": self.props,
        }
        if self.old_props is not None:
            tree["oldProps"] = self.old_props
        tree["output"] = self.output
        return tree

    @classmethod
    def from_json(cls, tree: object) -> State:
        """Build a state from a dict with Alchemy's field names; the reverse of :meth:`to_json`.

        ``props``, ``oldProps`` and ``output`` may be absent (read as ``None``), because
        Alchemy drops undefined fields; unknown fields are ignored so newer writers can add
        fields without breaking older readers.

        Args:
            tree: The decoded JSON object.

        Returns:
            The validated state.

        Raises:
            InvalidStateError: ``tree`` is not a dict, a required field is missing, or a
                field has the wrong type.
        """
        if not isinstance(tree, dict):
            raise InvalidStateError(f"a state must be a JSON object, got {type(tree).__name__}")
        if type(tree) is dict and cls is State:
            # The read path's common case: every field present and of its exact type, the
            # state filled in without __init__ (a dataclass's is most of the cost).
            # Anything else takes the loop, which names what is missing or wrong.
            state = _new(State)
            fields = state.__dict__
            try:
                fields["status"] = status = tree["status"]
                fields["kind"] = kind = tree["kind"]
                fields["id"] = id_ = tree["id"]
                fields["fqn"] = fqn = tree["fqn"]
                fields["seq"] = seq = tree["seq"]
                fields["data"] = data = tree["data"]
            except KeyError:
                pass
            else:
                get = tree.get
                fields["props"] = props = get("props")
                fields["old_props"] = old_props = get("oldProps")
                fields["output"] = output = get("output")
                if (
                    type(status) is str
                    and status in _STATUS_SET
                    and type(kind) is str
                    and type(id_) is str
                    and type(fqn) is str
                    and type(seq) is int
                    and type(data) is dict
                    and type(props) in _DICT_OR_NONE
                    and type(old_props) in _DICT_OR_NONE
                    and type(output) in _DICT_OR_NONE
                ):
                    return state
        values: dict[str, Any] = {}
        for name, json_name, _kind, _nullable in _STATE_FIELDS:
            if json_name in tree:
                values[name] = tree[json_name]
            elif json_name in _OPTIONAL_JSON_FIELDS:
                values[name] = None
            else:
                raise InvalidStateError(f"state field {json_name!r} is missing")
        state = cls(**values)
        state.validate()
        return state


@dataclass(frozen=True, order=True)
class Position:
    """Where an event sits in the state topic; orders by partition, then offset.

    Attributes:
        partition: The partition number.
        offset: The offset within the partition; -1 is "before the first record" (what a
            no-op delete returns in a partition the view has applied nothing of).
    """

    partition: int
    offset: int

    def __post_init__(self) -> None:
        # Kafka's partitions are int32 and its offsets int64.
        for name, least, bound in (("partition", 0, 2**31), ("offset", -1, 2**63)):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or not least <= value < bound:
                raise ValidationError(
                    f"position {name} must be an int from {least} to {bound - 1}, got {value!r}"
                )

    @property
    def token(self) -> str:
        """The position as ``"partition:offset"``, to hand to another process."""
        return f"{self.partition}:{self.offset}"

    def __str__(self) -> str:
        return self.token

    @classmethod
    def parse(cls, token: str) -> Position:
        """Read a ``"partition:offset"`` token back.

        Args:
            token: A token from :attr:`token` or ``str(position)``.

        Returns:
            The position.

        Raises:
            ValidationError: ``token`` is not ``partition:offset`` (decimal ints, offset >= -1).
        """
        if isinstance(token, str):
            partition, sep, offset = token.partition(":")
            # isdecimal refuses signs, spaces and '_' that int() would accept.
            if sep and partition.isdecimal() and (offset.isdecimal() or offset == "-1"):
                return cls(int(partition), int(offset))
        raise ValidationError(f"invalid position token {token!r}; expected 'partition:offset'")


def _now_ms() -> datetime:
    # Avro's timestamp-millis keeps milliseconds; truncating here makes a fresh event equal
    # to the same event read back.
    now = datetime.now(UTC)
    return now.replace(microsecond=now.microsecond // 1000 * 1000)


def new_event_id() -> str:
    """A fresh event id: a random (version 4) UUID as 32 hex digits, as ``uuid4().hex``
    writes it, without building a ``uuid.UUID`` (every write makes one)."""
    raw = bytearray(os.urandom(16))
    raw[6] = raw[6] & 0x0F | 0x40  # version 4
    raw[8] = raw[8] & 0x3F | 0x80  # the RFC 4122 variant
    return raw.hex()


@dataclass(frozen=True, kw_only=True)
class ChangeEvent:
    """One change to one key: the record written to Kafka.

    Attributes:
        event_id: A uuid4 hex string, unique per event.
        op: What happened: one of :data:`OPS`.
        scope: The scope chain the key lives in.
        key: The state's id.
        state: The serialized state tree (``State.to_json()`` of serialized values), or
            ``None`` for DELETE.
        version: The key's version after this change; 1 for the first SET.
        expected_version: The version the writer expected to replace (compare-and-set),
            or ``None``.
        timestamp: When the producer made the event; tz-aware UTC, millisecond precision.
        actor: Who made the change (``user@host`` by default).
        reason: Why, if the caller said.
        correlation_id: Ties events of one operation together, if the caller gave one.
        position: Where the event was read from; ``None`` until read from Kafka.
        lock_token: The lease the write was made under (a holder's write), or the lease a
            RENEW, UNLOCK or BREAK is about.
        idempotency_key: The caller's key for retrying this write safely, if given.
        on_behalf_of: The end user the actor says it acted for, if it said (a claim).

    A lock event (LOCK, RENEW, UNLOCK, BREAK) has ``key == ""``; a LOCK or RENEW's
    ``state`` is the lease (:meth:`Lease.to_json` without the token).
    """

    event_id: str
    op: Op
    scope: tuple[str, ...]
    key: str
    state: dict[str, Any] | None
    version: int
    expected_version: int | None
    timestamp: datetime
    actor: str
    reason: str | None
    correlation_id: str | None
    position: Position | None = None
    lock_token: int | None = None
    idempotency_key: str | None = None
    on_behalf_of: str | None = None

    def __post_init__(self) -> None:
        if self.op not in OPS:
            raise ValidationError(f"event op {self.op!r} is not one of {', '.join(OPS)}")
        if not isinstance(self.scope, tuple) or not self.scope:
            raise ValidationError("event scope must be a non-empty tuple of names")
        if self.timestamp.tzinfo is None:
            raise ValidationError("event timestamp must be tz-aware")

    @classmethod
    def new(
        cls,
        *,
        op: Op,
        scope: Scope | tuple[str, ...],
        key: str,
        state: dict[str, Any] | None,
        version: int,
        actor: str,
        reason: str | None = None,
        correlation_id: str | None = None,
        expected_version: int | None = None,
        lock_token: int | None = None,
        idempotency_key: str | None = None,
    ) -> ChangeEvent:
        """Make an event with a fresh ``event_id`` and the current time.

        Args:
            op: What happened.
            scope: The scope, or its chain.
            key: The state's id.
            state: The serialized state tree, or ``None`` for DELETE.
            version: The key's version after this change.
            actor: Who made the change.
            reason: Why, if known.
            correlation_id: Ties events of one operation together.
            expected_version: The version the writer expected to replace.

        Returns:
            The event, with ``position`` unset.

        Raises:
            ValidationError: ``op`` is unknown or ``scope`` is empty.
        """
        chain = scope.chain if isinstance(scope, Scope) else tuple(scope)
        return cls(
            event_id=new_event_id(),
            op=op,
            scope=chain,
            key=key,
            state=state,
            version=version,
            expected_version=expected_version,
            timestamp=_now_ms(),
            actor=actor,
            reason=reason,
            correlation_id=correlation_id,
            lock_token=lock_token,
            idempotency_key=idempotency_key,
        )


@dataclass(frozen=True, kw_only=True)
class Lease:
    """A lock held on a scope and every scope nested in it.

    Attributes:
        scope: The locked scope's path (a stage, or a scope nested in one).
        token: The fencing token: the offset of the LOCK event in the stage's partition,
            so it strictly increases with every lease granted on the stage.
        holder: The actor that took it.
        info: What the holder wants others to see (command, CI job, pid, ...).
        acquired_at: When it was taken.
        expires_at: When it lapses unless renewed.
    """

    scope: str
    token: int
    holder: str
    info: dict[str, Any]
    acquired_at: datetime
    expires_at: datetime

    def live(self, now: datetime) -> bool:
        """Whether the lease still holds at ``now``."""
        return now < self.expires_at

    def covers(self, path: str) -> bool:
        """Whether a write into ``path`` falls under this lease."""
        return path == self.scope or path.startswith(self.scope + "/")

    def overlaps(self, path: str) -> bool:
        """Whether a lease on ``path`` would cover this one's scope or be covered by it."""
        return self.covers(path) or self.scope.startswith(path + "/")

    def to_json(self, *, with_token: bool = True) -> dict[str, Any]:
        """The lease as JSON (Alchemy-style camelCase, times in epoch milliseconds)."""
        out: dict[str, Any] = {
            "scope": self.scope,
            "holder": self.holder,
            "info": self.info,
            "acquiredAt": _to_ms(self.acquired_at),
            "expiresAt": _to_ms(self.expires_at),
        }
        if with_token:
            out["token"] = self.token
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any], *, token: int | None = None) -> Lease:
        """The inverse of :meth:`to_json`; ``token`` fills in one the JSON lacks.

        Raises:
            ValidationError: a field is missing or of the wrong type.
        """
        try:
            found = data["token"] if token is None else token
            info = data.get("info") or {}
            if not isinstance(info, dict) or not isinstance(found, int):
                raise TypeError("info must be an object and token an int")
            return cls(
                scope=str(data["scope"]),
                token=found,
                holder=str(data["holder"]),
                info=info,
                acquired_at=_from_ms(int(data["acquiredAt"])),
                expires_at=_from_ms(int(data["expiresAt"])),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ValidationError(f"not a lease: {exc}") from exc


def _to_ms(when: datetime) -> int:
    return int(when.timestamp() * 1000)


def _from_ms(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, UTC)
