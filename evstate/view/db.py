"""The local RocksDB view of the state topic: the current value of every record key.

The only module that imports ``rocksdict``; every error it raises leaves here as one of
evstate's (:class:`ViewLockedError`, :class:`ViewUnavailableError`, :class:`ViewError`,
:class:`ClosedError`).

Key layout, in four column families of one RocksDB:

``default``
    record key ``scope:id`` -> the state's version, then its JSON text (``_codec``). A
    scope's states are one contiguous key range: ``list()`` is a prefix scan of
    ``scope:``, which nested scopes (``scope/child:``) never match. Only data lives here.
``evstate.offsets``
    partition (4-byte big-endian) -> next offset to consume (8-byte big-endian), i.e. the
    last applied offset + 1.
``evstate.fresh``
    partition -> a time (ms, 8-byte big-endian) at which the view held every record
    appended to the partition before it (see the applier: tombstones expire).
``evstate.meta``
    a name -> bytes: what the view knows about its topic, e.g. ``layout:{topic}`` -> the
    layout marker found there (:mod:`evstate.layout_check`), so a restart need not ask
    Kafka again. Kept by :meth:`View.clear` (a rebuild reads the same topic).
``evstate.rules``
    what the write rules read besides states (``keys.lease_key``, ``keys.idempotency_key``):
    each stage's leases, and the idempotency keys of recent writes. A change whose key
    starts with ``\x00`` (which no record key does) goes here.

The offset rule: :meth:`View.apply` writes a batch's changes *and* its partition's new
offset in one atomic ``WriteBatch``, so a crash never leaves data and offset out of step:
the consumer resumes at the stored offset. Writes are not fsynced: a power loss may drop
the last batches, data and offset together, and the consumer reads them again.

Reads run on the caller's thread without locks (RocksDB reads are safe alongside the one
writer); ``get`` adds a single Python call to ``Rdict.get``.
"""

from __future__ import annotations

import os
import weakref
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from types import TracebackType
from typing import Any, Final, cast

from rocksdict import (
    AccessType,
    DbClosedError,
    Rdict,
    ReadOptions,
    WriteBatch,
)

from evstate.errors import (
    ClosedError,
    EvstateError,
    ValidationError,
    ViewError,
    ViewUnavailableError,
)
from evstate.view._codec import Change
from evstate.view._rocks import (
    NUMBER,
    PARTITION,
    Scan,
    dir_id,
    distinct_prefixes,
    family_items,
    open_error,
    options,
    read_numbers,
    read_pairs,
    successor,
)

__all__ = ["View"]

_OFFSETS_CF: Final = "evstate.offsets"
_FRESH_CF: Final = "evstate.fresh"
_META_CF: Final = "evstate.meta"
_RULES_CF: Final = "evstate.rules"
_META: Final = b"\x00"  # first byte of a key of the rules' column family
_MAX_PARTITION: Final = 2**31  # Kafka partitions and offsets are signed 32/64-bit
_MAX_OFFSET: Final = 2**63
# Record keys are UTF-8 text, which never contains the byte 0xff: one range delete from
# b"" to b"\xff" empties the data, and the (normally absent) keys from b"\xff" on are
# deleted one by one in the same batch.
_TOP: Final = b"\xff"


class View:
    """RocksDB view of the state topic. Not thread-safe for writes: one applier.

    Open with :meth:`open`; use as a context manager or call :meth:`close`. Reads
    (:meth:`get`, :meth:`scan_prefix`, ...) may run from any thread alongside the applier.
    """

    __slots__ = (
        "_closed",
        "_db",
        "_dir_id",
        "_fresh",
        "_get",
        "_meta",
        "_offsets",
        "_path",
        "_scans",
    )

    def __init__(self, db: Rdict, path: str) -> None:
        """Wrap an open ``Rdict``; use :meth:`open` instead."""
        self._db = db
        self._path = path
        self._closed = False
        self._dir_id = dir_id(path)
        # Bound once: View.get is on the read hot path and must cost one call more than
        # Rdict.get, not an attribute chain.
        self._get: Callable[[bytes], bytes | None] = db.get
        # Live scans, cut off at close: rocksdict keeps the db (and its LOCK) open for as
        # long as any iterator or column-family handle on it lives, even after close().
        self._scans: weakref.WeakSet[Scan] = weakref.WeakSet()
        self._offsets = read_numbers(db, _OFFSETS_CF, path)
        self._fresh = read_numbers(db, _FRESH_CF, path)
        self._meta = read_pairs(db, _META_CF)

    @classmethod
    def open(cls, path: str | os.PathLike[str], *, create: bool = True) -> View:
        """Open (and by default create) the view in a dir.

        Args:
            path: the view's dir; one process at a time may hold it.
            create: create the dir and the database if missing.

        Returns:
            The open view.

        Raises:
            ViewLockedError: another process (or another view in this one) holds the dir.
            ViewUnavailableError: the dir is missing (with ``create=False``), not a dir,
                or not writable.
            ViewError: RocksDB refused to open it for another reason (e.g. corruption).
        """
        where = os.path.abspath(os.fspath(path))
        if create and not os.path.exists(where):
            try:
                os.makedirs(where, exist_ok=True)
            except OSError as exc:
                raise ViewUnavailableError(
                    f"cannot create the view dir {where}: {exc.strerror or exc}; "
                    "choose a dir this user may write",
                    path=where,
                ) from exc
        if not os.path.isdir(where):
            what = "is not a directory" if os.path.exists(where) else "does not exist"
            raise ViewUnavailableError(
                f"the view dir {where} {what}; create it, or open with create=True",
                path=where,
            )
        if not os.access(where, os.W_OK | os.X_OK):
            raise ViewUnavailableError(
                f"the view dir {where} is not writable by this user; fix its permissions "
                "or choose another dir",
                path=where,
            )
        opts = options()
        opts.create_if_missing(create)
        opts.create_missing_column_families(True)
        try:
            db = Rdict(
                where,
                opts,
                column_families={
                    cf: options() for cf in (_OFFSETS_CF, _FRESH_CF, _META_CF, _RULES_CF)
                },
                access_type=AccessType.read_write(),
            )
        except Exception as exc:
            raise open_error(exc, where) from exc
        try:
            return cls(db, where)
        except BaseException:
            db.close()
            raise

    @property
    def path(self) -> str:
        """The view's dir (absolute)."""
        return self._path

    def close(self) -> None:
        """Flush and release the dir. Idempotent; any later call raises ClosedError.

        Raises:
            ViewError: RocksDB could not flush (not raised if the dir is already gone:
                there is nothing left to flush to, and the view rebuilds from Kafka).
        """
        if self._closed:
            return
        self._closed = True
        for scan in list(self._scans):
            scan.cut()
        self._scans.clear()
        try:
            self._db.close()
        except Exception as exc:
            if self._alive():
                raise ViewError(f"closing the view at {self._path} failed: {exc}") from exc

    def __enter__(self) -> View:
        self._check_open()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"View(path={self._path!r}, {state})"

    def applied_offsets(self) -> dict[int, int]:
        """Per partition, the next offset to consume (last applied + 1); empty when fresh.

        Raises:
            ClosedError: the view is closed.
        """
        self._check_open()
        return dict(self._offsets)

    def fresh_times(self) -> dict[int, int]:
        """Per partition, a time (ms since the epoch) at which the view held every record
        appended to the partition before it.

        Raises:
            ClosedError: the view is closed.
        """
        self._check_open()
        return dict(self._fresh)

    def mark_fresh(self, times: Mapping[int, int]) -> None:
        """Record :meth:`fresh_times` (ms); a time older than the one stored is ignored.

        Raises:
            ViewUnavailableError, ViewError, ClosedError: as :meth:`apply`.
        """
        self._check_open()
        batch = WriteBatch(raw_mode=True)
        newer = self._put_fresh(batch, times)
        if newer:
            self._write(batch)
            self._fresh.update(newer)

    def _put_fresh(self, batch: WriteBatch, times: Mapping[int, int]) -> dict[int, int]:
        newer = {p: ms for p, ms in times.items() if ms > self._fresh.get(p, -1)}
        try:
            cf = self._db.get_column_family_handle(_FRESH_CF)
            for partition, ms in newer.items():
                batch.put(PARTITION.pack(partition), NUMBER.pack(ms), cf)
        except Exception as exc:
            raise self._error(exc) from exc
        return newer

    def meta(self, name: bytes) -> bytes | None:
        """What the view recorded under ``name`` (``evstate.meta``), or None.

        Raises:
            ClosedError: the view is closed.
        """
        self._check_open()
        return self._meta.get(name)

    def set_meta(self, name: bytes, value: bytes) -> None:
        """Record ``value`` under ``name`` (``evstate.meta``); :meth:`clear` keeps it.

        Raises:
            ViewUnavailableError, ViewError, ClosedError: as :meth:`apply`.
        """
        self._check_open()
        batch = WriteBatch(raw_mode=True)
        try:
            batch.put(name, value, self._db.get_column_family_handle(_META_CF))
        except Exception as exc:
            raise self._error(exc) from exc
        self._write(batch)
        self._meta[name] = value

    def drop_partitions(
        self, partitions: Collection[int], partition_of: Callable[[bytes], int]
    ) -> int:
        """Forget some partitions: every key whose ``partition_of`` is one of them, and
        their offsets and times, in one atomic batch.

        The applier then reads those partitions from their start again. Scans every key (a
        rare repair, not a hot path: run it off the event loop).

        Returns:
            How many keys were deleted.

        Raises:
            ViewUnavailableError, ViewError, ClosedError: as :meth:`apply`.
        """
        self._check_open()
        batch = WriteBatch(raw_mode=True)
        dropped = 0
        try:
            for key in self._db.keys(from_key=b""):
                if partition_of(cast(bytes, key)) in partitions:
                    batch.delete(key)
                    dropped += 1
            meta = self._db.get_column_family_handle(_RULES_CF)
            for key in self._db.get_column_family(_RULES_CF).keys(from_key=b""):
                if partition_of(cast(bytes, key)) in partitions:
                    batch.delete(key, meta)
            for cf_name in (_OFFSETS_CF, _FRESH_CF):
                cf = self._db.get_column_family_handle(cf_name)
                for partition in partitions:
                    batch.delete(PARTITION.pack(partition), cf)
        except Exception as exc:
            raise self._error(exc) from exc
        self._write(batch)
        for partition in partitions:
            self._offsets.pop(partition, None)
            self._fresh.pop(partition, None)
        return dropped

    def apply(self, partition: int, next_offset: int, changes: Iterable[Change]) -> None:
        """Apply one partition's changes and advance its offset, atomically.

        Args:
            partition: the Kafka partition the changes came from.
            next_offset: the offset to consume next (last record's offset + 1).
            changes: ``(key, value)`` pairs in log order; ``value=None`` deletes. May be
                empty: transaction markers and skipped records take offsets too.

        Raises:
            ValidationError: a partition or offset out of range, or a key or value not
                bytes; nothing was written. An exception raised by ``changes`` itself
                passes through unchanged, and nothing is written either.
            ViewUnavailableError: the dir was removed under the view.
            ViewError: RocksDB refused the write.
            ClosedError: the view is closed.
        """
        self.apply_many(((partition, next_offset, changes),))

    def apply_many(
        self,
        batches: Iterable[tuple[int, int, Iterable[Change]]],
        fresh: Mapping[int, int] | None = None,
    ) -> None:
        """Like :meth:`apply` for several partitions, in one atomic ``WriteBatch``.

        A partition may appear more than once; its last ``next_offset`` wins. ``fresh``
        records :meth:`fresh_times` in the same batch.

        Raises:
            The same as :meth:`apply`.
        """
        self._check_open()
        batch = WriteBatch(raw_mode=True)
        offsets: dict[int, int] = {}
        meta = self._db.get_column_family_handle(_RULES_CF)
        for partition, next_offset, changes in batches:
            if not (0 <= partition < _MAX_PARTITION and 0 <= next_offset < _MAX_OFFSET):
                raise ValidationError(
                    f"partition {partition} or offset {next_offset} is out of range"
                )
            for key, value in changes:
                try:
                    if key[:1] == _META:
                        if value is None:
                            batch.delete(key, meta)
                        else:
                            batch.put(key, value, meta)
                    elif value is None:
                        batch.delete(key)
                    else:
                        batch.put(key, value)
                except (KeyError, ValueError, TypeError, IndexError) as exc:  # not bytes
                    raise ValidationError(
                        f"record keys and values must be bytes, got {type(key).__name__} "
                        f"and {type(value).__name__}"
                    ) from exc
            offsets[partition] = next_offset
        try:
            # Fetched per call, not kept: a live handle keeps the db open after close().
            offsets_cf = self._db.get_column_family_handle(_OFFSETS_CF)
            for partition, next_offset in offsets.items():
                batch.put(PARTITION.pack(partition), NUMBER.pack(next_offset), offsets_cf)
        except Exception as exc:
            raise self._error(exc) from exc
        if not offsets:
            return
        newer = self._put_fresh(batch, fresh) if fresh else {}
        self._write(batch)
        self._offsets.update(offsets)
        self._fresh.update(newer)

    def get(self, key: bytes) -> bytes | None:
        """The value of a record key, or None if the view has none.

        Raises:
            ClosedError: the view is closed.
            ViewError: RocksDB failed to read.
        """
        try:
            return self._get(key)
        except Exception as exc:
            raise self._error(exc) from exc

    def get_many(self, keys: Sequence[bytes]) -> dict[bytes, bytes]:
        """The values of several keys in one multi-get; missing keys are left out.

        Raises:
            The same as :meth:`get`.
        """
        if not keys:
            self._check_open()
            return {}
        wanted = keys if isinstance(keys, list) else list(keys)
        try:
            values = cast("list[bytes | None]", self._db.get(wanted))
        except Exception as exc:
            raise self._error(exc) from exc
        return {k: v for k, v in zip(wanted, values, strict=True) if v is not None}

    def rules_items(self, prefix: bytes) -> list[tuple[bytes, bytes]]:
        """Every meta ``(key, value)`` whose key starts with ``prefix``, in key order.

        Raises:
            The same as :meth:`get`.
        """
        self._check_open()
        try:
            return family_items(self._db, _RULES_CF, prefix)
        except Exception as exc:
            raise self._error(exc) from exc

    def rules_delete(self, keys: Iterable[bytes]) -> None:
        """Forget some meta keys (expired idempotency keys), in one batch; as :meth:`apply`."""
        self._check_open()
        batch = WriteBatch(raw_mode=True)
        try:
            meta = self._db.get_column_family_handle(_RULES_CF)
            for key in keys:
                batch.delete(key, meta)
        except Exception as exc:
            raise self._error(exc) from exc
        self._write(batch)

    def scan_prefix(self, prefix: bytes) -> Iterator[tuple[bytes, bytes]]:
        """Every ``(key, value)`` whose key starts with ``prefix``, in key order.

        The scan reads a consistent snapshot taken when iteration starts. A long scan
        blocks; run it in a thread from async code.

        Raises:
            The same as :meth:`get`.
        """
        return self._iterate(prefix, values=True)

    def keys_prefix(self, prefix: bytes) -> list[bytes]:
        """Every key starting with ``prefix``, in key order, without reading values.

        Raises:
            The same as :meth:`get`.
        """
        return list(self._iterate(prefix, values=False))

    def count_prefix(self, prefix: bytes) -> int:
        """How many keys start with ``prefix`` (values are not read).

        Raises:
            The same as :meth:`get`.
        """
        return sum(1 for _ in self._iterate(prefix, values=False))

    def prefixes(self, sep: bytes = b":") -> list[bytes]:
        """The distinct key parts before the first ``sep``, sorted (for ``evstate scopes``).

        Keys without ``sep`` are not record keys and are left out. Each prefix costs one
        seek, not a walk over its keys.

        Raises:
            ValidationError: ``sep`` is empty.
            ClosedError: the view is closed.
            ViewError: RocksDB failed to read.
        """
        if not sep:
            raise ValidationError("sep must not be empty")
        self._check_open()
        try:
            return distinct_prefixes(self._db, sep)
        except Exception as exc:
            raise self._error(exc) from exc

    def clear(self) -> None:
        """Drop all data, offsets and times in one atomic batch (a rebuild); stays open.

        What :meth:`meta` holds stays: it is about the topic, which a rebuild reads again.

        Raises:
            ViewUnavailableError: the dir was removed under the view.
            ViewError: RocksDB refused the write.
            ClosedError: the view is closed.
        """
        self._check_open()
        batch = WriteBatch(raw_mode=True)
        try:
            offsets_cf = self._db.get_column_family_handle(_OFFSETS_CF)
            batch.delete_range(b"", _TOP)
            for key in self._db.keys(from_key=_TOP):
                batch.delete(key)
            for partition in self._offsets:
                batch.delete(PARTITION.pack(partition), offsets_cf)
            caught_up_cf = self._db.get_column_family_handle(_FRESH_CF)
            for partition in self._fresh:
                batch.delete(PARTITION.pack(partition), caught_up_cf)
            meta = self._db.get_column_family_handle(_RULES_CF)
            for key in self._db.get_column_family(_RULES_CF).keys(from_key=b""):
                batch.delete(key, meta)
        except Exception as exc:
            raise self._error(exc) from exc
        self._write(batch)
        self._offsets.clear()
        self._fresh.clear()

    def check_alive(self) -> None:
        """Check that the view's dir is still the one opened.

        Raises:
            ViewUnavailableError: the dir was deleted (or replaced) under the view.
            ClosedError: the view is closed.
        """
        self._check_open()
        if not self._alive():
            raise self._gone()

    # -- internals -------------------------------------------------------------------

    def _alive(self) -> bool:
        ident = dir_id(self._path)
        return (
            ident is not None
            and ident == self._dir_id
            and os.path.exists(os.path.join(self._path, "CURRENT"))
        )

    def _gone(self) -> ViewUnavailableError:
        return ViewUnavailableError(
            f"the view dir {self._path} was deleted or replaced while in use; close this "
            "view and open it again (it rebuilds from Kafka)",
            path=self._path,
        )

    def _check_open(self) -> None:
        if self._closed:
            raise ClosedError(f"the view at {self._path} is closed")

    def _write(self, batch: WriteBatch) -> None:
        try:
            self._db.write(batch)
        except Exception as exc:
            raise self._error(exc) from exc

    def _iterate(self, prefix: bytes, *, values: bool) -> Scan:
        """Keys (or items) from ``prefix`` up to its successor, errors translated."""
        self._check_open()
        opts = ReadOptions()
        upper = successor(prefix)
        if upper is not None:
            # Lets RocksDB stop at the range's end instead of us reading one key past it
            # (and any tombstones there). Note: rocksdict 0.3.29's set_iterate_lower_bound
            # acts as an upper bound, so the start is given as from_key only.
            opts.set_iterate_upper_bound(upper)
        try:
            if values:
                rows: Iterator[Any] = self._db.items(from_key=prefix, read_opt=opts)
            else:
                rows = self._db.keys(from_key=prefix, read_opt=opts)
        except Exception as exc:
            raise self._error(exc) from exc
        scan = Scan(rows, opts, path=self._path, error=self._error)
        self._scans.add(scan)
        return scan

    def _error(self, exc: Exception) -> Exception:
        """Translate an exception met while using the open db."""
        if isinstance(exc, EvstateError):
            return exc
        if self._closed or isinstance(exc, DbClosedError):
            return ClosedError(f"the view at {self._path} is closed")
        if isinstance(exc, KeyError | ValueError | TypeError):
            return ValidationError(f"record keys and values must be bytes: {exc}")
        if not self._alive():
            return self._gone()
        return ViewError(f"RocksDB failed in the view at {self._path}: {exc}")
