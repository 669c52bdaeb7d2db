"""Alchemy's ``StateStore`` contract for one scope, on Kafka and the RocksDB view.

Writes validate and serialize everything before a byte is sent, so bad input raises a
:class:`~evstate.errors.ValidationError` (or a serde error) and nothing is written.
Reads wait for the asked consistency (``session`` by default: this process's own writes),
then read the view.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import json
import logging
from collections.abc import Sequence
from types import TracebackType
from typing import Any

from evstate import keys, secrets
from evstate.config import Settings
from evstate.engine import Engine
from evstate.errors import (
    InvalidKeyError,
    InvalidRecordError,
    InvalidScopeError,
    InvalidStateError,
    SecretError,
    SerdeError,
    UnreadableStateError,
    ValidationError,
)
from evstate.model import ChangeEvent, Consistency, Op, Position, Scope, State, Tree
from evstate.serde import (
    SecretAhead,
    check_tree,
    deserialize_state,
    loads_state,
    serialize_state,
)
from evstate.view import decode_value
from evstate.writer import Intent

log = logging.getLogger(__name__)

__all__ = ["KafkaStateStore", "States"]


def _tree(raw: bytes) -> Tree:
    tree: Tree = json.loads(decode_value(raw)[1])
    return tree


class States(dict[str, State]):
    """``{id: State}`` as :meth:`KafkaStateStore.all` and ``get_batch`` return it.

    A stored state that does not decode (a malformed marker written before such trees
    were refused, a tree that is not a state) does not hide the others: it is left out,
    logged as a warning naming scope and key, and reported here.

    Attributes:
        unreadable: ``{id: UnreadableStateError}`` for the states left out (empty when
            every state decoded).
    """

    unreadable: dict[str, UnreadableStateError]

    def __init__(self) -> None:
        super().__init__()
        self.unreadable = {}


# deinit deletes keys with this many writes in flight at once.
_DEINIT_CONCURRENCY = 64


class KafkaStateStore:
    """The state store of one scope.

    Either made by :meth:`EvstateClient.store <evstate.client.EvstateClient.store>`
    (sharing that client's engine), or on its own:
    ``async with KafkaStateStore(scope, bootstrap_servers=..., view_dir=...) as store``,
    in which case it owns an engine and closes it on exit.
    """

    def __init__(self, scope: Scope, *, engine: Engine | None = None, **settings: Any):
        """Args:
        scope: the scope this store serves.
        engine: a shared engine; when None the store makes (and owns) one.
        **settings: :class:`~evstate.config.Settings` fields for an owned engine.

        Raises:
            InvalidScopeError: ``scope`` is not a :class:`~evstate.model.Scope`.
        """
        if not isinstance(scope, Scope):
            raise InvalidScopeError(f"scope must be an evstate.Scope, not {type(scope).__name__}")
        self.scope = scope
        self._owns = engine is None
        self._engine = engine if engine is not None else Engine(Settings.from_env(**settings))
        self._prefix = keys.scope_prefix(scope).encode("utf-8")

    async def __aenter__(self) -> KafkaStateStore:
        if self._owns:
            await self._engine.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._owns:
            await self._engine.close()

    @property
    def engine(self) -> Engine:
        """The engine this store writes and reads through."""
        return self._engine

    def _record_key(self, key: str) -> bytes:
        keys.validate_key(key)
        return self._prefix + key.encode("utf-8")

    def _unreadable(self, key: str, exc: Exception) -> UnreadableStateError:
        log.warning("unreadable state %r in scope %r: %s", key, self.scope.path, exc)
        return UnreadableStateError(
            f"the state of {key!r} in scope {self.scope.path!r} cannot be read: {exc}",
            scope=self.scope.path,
            key=key,
            reason=str(exc),
        )

    async def _states(self, rows: builtins.list[tuple[str, bytes]]) -> States:
        """Decode view values; the scrypt for any secret runs off the event loop first.

        Each value is parsed and revived in one pass (:func:`~evstate.serde.loads_state`)
        that stops at a secret; the values holding one are read again once their keys are
        derived in a worker thread. A value that is broken in itself goes to
        ``unreadable``; a secret that the scope's password does not open raises (the
        password is wrong, not the state).
        """
        result = States()
        read: dict[str, State] = {}
        with_secrets: builtins.list[tuple[str, bytes]] = []
        for key, raw in rows:
            try:
                text = decode_value(raw)[1].decode("utf-8")
                read[key] = loads_state(self.scope, text, defer_secrets=True, bounded=True)
            except (SecretAhead, SecretError):  # SecretError: a legacy secret, say
                with_secrets.append((key, raw))
            except (SerdeError, ValueError) as exc:  # ValidationError is a ValueError
                result.unreadable[key] = self._unreadable(key, exc)
        if with_secrets:
            await self._open_secrets(with_secrets, read, result)
        for key, _ in rows:
            if key in read:
                result[key] = read[key]
        return result

    async def _open_secrets(
        self, rows: builtins.list[tuple[str, bytes]], read: dict[str, State], result: States
    ) -> None:
        """Read into ``read`` the ``rows`` that hold secrets, their keys derived off the loop."""
        trees: dict[str, Tree] = {}
        for key, raw in rows:
            try:  # parsed as far as a secret: the rest may still be broken
                trees[key] = _tree(raw)
            except ValueError as exc:
                result.unreadable[key] = self._unreadable(key, exc)
        await secrets.warm(self.scope.password, list(trees.values()))
        for key, tree in trees.items():
            try:
                read[key] = deserialize_state(self.scope, tree)
            except SecretError as exc:
                # Broken in itself (check_tree says so without a password), or a password
                # that does not open it: only the first is the state's fault.
                try:
                    check_tree(tree)
                except (SerdeError, ValueError) as broken:
                    result.unreadable[key] = self._unreadable(key, broken)
                else:
                    raise exc from None
            except (SerdeError, ValueError) as exc:
                result.unreadable[key] = self._unreadable(key, exc)

    async def _read_one(
        self, key: str, consistency: Consistency, min_position: Position | None
    ) -> bytes | None:
        record_key = self._record_key(key)
        await self._engine.consistent(self.scope, consistency, min_position)
        return self._engine.view.get(record_key)

    async def _read_many(
        self, ids: Sequence[str], consistency: Consistency, min_position: Position | None
    ) -> builtins.list[tuple[str, bytes]]:
        if not ids:
            return []
        record_keys = [self._record_key(i) for i in ids]
        await self._engine.consistent(self.scope, consistency, min_position)
        found = self._engine.view.get_many(record_keys)
        return [(i, found[rk]) for i, rk in zip(ids, record_keys, strict=True) if rk in found]

    async def _read_all(
        self, consistency: Consistency, min_position: Position | None
    ) -> builtins.list[tuple[str, bytes]]:
        await self._engine.consistent(self.scope, consistency, min_position)
        cut = len(self._prefix)
        return [
            (k[cut:].decode("utf-8"), v) for k, v in self._engine.view.scan_prefix(self._prefix)
        ]

    # -- the contract -------------------------------------------------------------

    async def init(self) -> None:
        """Create the topics and start the view (idempotent).

        Raises:
            TopicMismatchError: a topic exists with settings evstate cannot use.
            BrokerUnavailableError: Kafka is unreachable.
        """
        await self._engine.ensure_topics()

    async def deinit(self) -> None:
        """Delete every state of this scope: a DELETE event per key, kept in the history."""
        ids = await self.list()
        gate = asyncio.Semaphore(_DEINIT_CONCURRENCY)

        async def one(key: str) -> None:
            async with gate:
                await self._write("DELETE", key, None, reason="deinit", correlation_id=None)

        await asyncio.gather(*(one(k) for k in ids))

    async def list(
        self, *, consistency: Consistency = "session", min_position: Position | None = None
    ) -> builtins.list[str]:
        """Ids directly in this scope (nested scopes excluded), in key order."""
        await self._engine.consistent(self.scope, consistency, min_position)
        cut = len(self._prefix)
        return [k[cut:].decode("utf-8") for k in self._engine.view.keys_prefix(self._prefix)]

    async def count(
        self, *, consistency: Consistency = "session", min_position: Position | None = None
    ) -> int:
        """How many states this scope holds (no state is decoded)."""
        await self._engine.consistent(self.scope, consistency, min_position)
        return self._engine.view.count_prefix(self._prefix)

    async def get(
        self,
        key: str,
        *,
        consistency: Consistency = "session",
        min_position: Position | None = None,
    ) -> State | None:
        """The state of ``key``, or None when it has none.

        Raises:
            InvalidKeyError: the key is empty or contains ``:``.
            ConsistencyTimeout: the view did not reach the asked position in time.
            UnreadableStateError: the stored state does not decode (names the key).
            SecretError: a secret does not open with the scope's password.
        """
        raw = await self._read_one(key, consistency, min_position)
        if raw is None:
            return None
        with contextlib.suppress(SecretAhead, SerdeError, ValueError):  # SecretError too
            text = decode_value(raw)[1].decode("utf-8")
            return loads_state(self.scope, text, defer_secrets=True, bounded=True)
        # A secret to open off the loop, or an error to report as _states does.
        states = await self._states([(key, raw)])
        if key in states.unreadable:
            raise states.unreadable[key]
        return states[key]

    async def get_batch(
        self,
        ids: Sequence[str],
        *,
        consistency: Consistency = "session",
        min_position: Position | None = None,
    ) -> States:
        """``{id: State}`` for the ids that have a state; missing ids are left out.

        Returns:
            A :class:`States` dict; a stored state that does not decode is left out and
            reported in its ``unreadable`` (and logged), the others are returned.

        Raises:
            SecretError: a secret does not open with the scope's password.
        """
        return await self._states(await self._read_many(ids, consistency, min_position))

    async def all(
        self, *, consistency: Consistency = "session", min_position: Position | None = None
    ) -> States:
        """Every state of this scope, by id.

        Returns:
            A :class:`States` dict; a stored state that does not decode is left out and
            reported in its ``unreadable`` (and logged), the others are returned.

        Raises:
            SecretError: a secret does not open with the scope's password.
        """
        return await self._states(await self._read_all(consistency, min_position))

    async def get_tree(
        self,
        key: str,
        *,
        consistency: Consistency = "session",
        min_position: Position | None = None,
    ) -> Tree | None:
        """The state of ``key`` as stored: serialized, secrets encrypted (no password needed)."""
        raw = await self._read_one(key, consistency, min_position)
        return None if raw is None else _tree(raw)

    async def get_batch_trees(
        self,
        ids: Sequence[str],
        *,
        consistency: Consistency = "session",
        min_position: Position | None = None,
    ) -> dict[str, Tree]:
        """:meth:`get_batch`, as stored trees."""
        return {i: _tree(raw) for i, raw in await self._read_many(ids, consistency, min_position)}

    async def all_trees(
        self, *, consistency: Consistency = "session", min_position: Position | None = None
    ) -> dict[str, Tree]:
        """:meth:`all`, as stored trees."""
        return {k: _tree(raw) for k, raw in await self._read_all(consistency, min_position)}

    async def version(self, key: str, *, consistency: Consistency = "session") -> int:
        """The version of ``key``'s state (1 after its first SET), 0 if it has none.

        Hand it to ``set(..., expected_version=...)`` for a compare-and-set.
        """
        raw = await self._read_one(key, consistency, None)
        return 0 if raw is None else decode_value(raw)[0]

    async def set(
        self,
        key: str,
        state: State,
        *,
        reason: str | None = None,
        correlation_id: str | None = None,
        expected_version: int | None = None,
        idempotency_key: str | None = None,
        lock_token: int | None = None,
        actor: str | None = None,
        on_behalf_of: str | None = None,
    ) -> Position:
        """Upsert ``state`` under ``key`` (which must equal ``state.id``).

        Args:
            expected_version: compare-and-set: write only if the key is at this version
                now (``0``: only if it has no state). Decided in log order.
            idempotency_key: a retry with the same key (after a timeout or a 503) returns
                the first attempt's position if it was committed, and writes nothing.
            lock_token: write under this lease (a holder elsewhere, e.g. over HTTP); a
                lease this client holds is attached by itself.
            actor: record this actor instead of the client's (``evstate serve`` records
                the authenticated principal).
            on_behalf_of: the end user the actor acted for, recorded as a claim.

        Returns:
            Where the event landed; hand it to another reader as ``min_position``.

        Raises:
            InvalidKeyError: empty key, ``:`` in it, or ``key != state.id``.
            InvalidStateError: ``state`` is not a State, an unknown status, wrong field types.
            UnserializableError: a value has no JSON form (the message names its path).
            EventTooLargeError: the event is over the broker's limit.
            ConflictError: the key is not at ``expected_version``; nothing was written.
            LockHeldError: another's lease covers the scope; nothing was written.
            FencedError: this client's lease there was broken or taken over.
            WriteFailedError, BrokerUnavailableError: Kafka did not acknowledge.
        """
        self._record_key(key)  # validates the key
        if not isinstance(state, State):
            raise InvalidStateError(f"state must be an evstate.State, not {type(state).__name__}")
        if state.id != key:
            raise InvalidKeyError(f"key {key!r} differs from state.id {state.id!r}")
        await secrets.warm(self.scope.password)  # scrypt off the event loop, once
        tree = serialize_state(self.scope, state)
        return await self._write(
            "SET",
            key,
            tree,
            reason=reason,
            correlation_id=correlation_id,
            expected_version=expected_version,
            idempotency_key=idempotency_key,
            lock_token=lock_token,
            actor=actor,
            on_behalf_of=on_behalf_of,
        )

    async def set_tree(
        self,
        key: str,
        tree: Tree,
        *,
        reason: str | None = None,
        correlation_id: str | None = None,
        expected_version: int | None = None,
        idempotency_key: str | None = None,
        lock_token: int | None = None,
        actor: str | None = None,
        on_behalf_of: str | None = None,
    ) -> Position:
        """Upsert a state that is already serialized (Alchemy's JSON, secrets encrypted).

        The tree is stored as it is: this is how states written by Alchemy itself (over
        ``evstate serve``, or from its state folders) keep their bytes, secrets included.

        Raises:
            InvalidKeyError: empty key, ``:`` in it, or ``key != tree["id"]``.
            InvalidStateError: the tree is not a state (fields, types, status).
            SerdeError: a marker would not decode (``{"@date": "garbage"}``, a malformed
                ``@secret``); nothing is written.
            UnserializableError, EventTooLargeError, WriteFailedError: as :meth:`set`.
        """
        self._check_tree(key, tree)
        return await self._write(
            "SET",
            key,
            tree,
            reason=reason,
            correlation_id=correlation_id,
            expected_version=expected_version,
            idempotency_key=idempotency_key,
            lock_token=lock_token,
            actor=actor,
            on_behalf_of=on_behalf_of,
        )

    async def set_record(
        self,
        key: str,
        record: Tree,
        *,
        reason: str | None = None,
        correlation_id: str | None = None,
        lock_token: int | None = None,
        actor: str | None = None,
        on_behalf_of: str | None = None,
    ) -> Position:
        """Upsert a record of another shape than Alchemy v1's ``State``, kept whole and
        opaque (Alchemy v2's records, :mod:`evstate.stacks`): only the key is checked.

        Raises:
            InvalidKeyError: empty key, ``:`` in it, a control character or a bad segment.
            InvalidRecordError: ``record`` is not a dict.
            EventTooLargeError, LockHeldError, FencedError, WriteFailedError: as :meth:`set`.
        """
        self._record_key(key)
        if not isinstance(record, dict):
            raise InvalidRecordError(f"a record must be a dict, not {type(record).__name__}")
        return await self._write(
            "SET",
            key,
            record,
            reason=reason,
            correlation_id=correlation_id,
            lock_token=lock_token,
            actor=actor,
            on_behalf_of=on_behalf_of,
        )

    def _check_tree(self, key: str, tree: Tree) -> None:
        self._record_key(key)
        State.from_json(tree)  # checks fields, types and status
        check_tree(tree)  # markers that would not decode
        if tree.get("id") != key:
            raise InvalidKeyError(f"key {key!r} differs from the state's id {tree.get('id')!r}")

    async def check_set_tree(self, key: str, tree: Tree, *, reason: str | None = None) -> None:
        """Raise what :meth:`set_tree` would refuse, without writing anything.

        Raises:
            As :meth:`set_tree`, except the errors of Kafka not acknowledging.
        """
        self._check_tree(key, tree)
        event = ChangeEvent.new(
            op="SET",
            scope=self.scope,
            key=key,
            state=tree,
            version=1,
            actor=self._engine.settings.actor,
            reason=reason,
        )
        await self._engine.check_write(self.scope, event)

    async def _write(
        self,
        op: Op,
        key: str,
        tree: Tree | None,
        *,
        reason: str | None,
        correlation_id: str | None,
        expected_version: int | None = None,
        idempotency_key: str | None = None,
        lock_token: int | None = None,
        actor: str | None = None,
        on_behalf_of: str | None = None,
    ) -> Position:
        self._record_key(key)
        for name, value in (("actor", actor), ("on_behalf_of", on_behalf_of)):
            if value is not None and not (
                isinstance(value, str) and 0 < len(value) <= 200 and value.isprintable()
            ):
                raise ValidationError(f"{name} must be 1 to 200 printable characters")
        if expected_version is not None and (
            isinstance(expected_version, bool)
            or not isinstance(expected_version, int)
            or expected_version < 0
        ):
            raise ValidationError(
                f"expected_version must be an int >= 0 (0: the key must have no state), "
                f"not {expected_version!r}"
            )
        if idempotency_key is not None:
            keys.validate_idempotency_key(idempotency_key)
        if lock_token is not None and (
            isinstance(lock_token, bool) or not isinstance(lock_token, int) or lock_token < 0
        ):
            raise ValidationError(f"lock_token must be an int >= 0, not {lock_token!r}")
        outcome = await self._engine.write(
            Intent(
                op=op,
                scope=self.scope,
                key=key,
                state=tree,
                actor=actor or self._engine.settings.actor,
                reason=reason,
                correlation_id=correlation_id,
                expected_version=expected_version,
                idempotency_key=idempotency_key,
                lock_token=lock_token,
                on_behalf_of=on_behalf_of,
            )
        )
        if outcome.position is None:  # a delete of a key with no state
            return self._engine.applied_position(self.scope)
        return outcome.position

    async def delete(
        self,
        key: str,
        *,
        reason: str | None = None,
        correlation_id: str | None = None,
        expected_version: int | None = None,
        idempotency_key: str | None = None,
        lock_token: int | None = None,
        actor: str | None = None,
        on_behalf_of: str | None = None,
    ) -> Position:
        """Delete ``key``'s state; a key with no state is a no-op.

        Args:
            expected_version: compare-and-set: delete only if the key is at this version
                (``0``: only if it has no state).
            idempotency_key: a retry with the same key returns the first attempt's
                position and writes nothing.

        Returns:
            Where the DELETE landed, or, for a no-op, the view's current position.

        Raises:
            ConflictError: the key is not at ``expected_version``; nothing was written.
            LockHeldError, FencedError: a lease on the scope forbids it.
        """
        return await self._write(
            "DELETE",
            key,
            None,
            reason=reason,
            correlation_id=correlation_id,
            expected_version=expected_version,
            idempotency_key=idempotency_key,
            lock_token=lock_token,
            actor=actor,
            on_behalf_of=on_behalf_of,
        )
