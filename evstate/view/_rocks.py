"""RocksDB through rocksdict, low level: options, bounded scans, error translation.

Private to :mod:`evstate.view`, the only package that imports rocksdict.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Callable, Iterator
from typing import Any, Final, cast

from rocksdict import BlockBasedOptions, Cache, Options, Rdict, ReadOptions

from evstate.errors import (
    ClosedError,
    EvstateError,
    ViewError,
    ViewLockedError,
    ViewUnavailableError,
)

PARTITION = struct.Struct(">I")
NUMBER = struct.Struct(">Q")
_BLOCK_CACHE_BYTES: Final = 64 * 1024 * 1024
_MAX_WAL_BYTES: Final = 128 * 1024 * 1024


def options() -> Options:
    """RocksDB options for a point-read-heavy view with prefix scans."""
    table = BlockBasedOptions()
    # Most reads are point lookups, many of keys that do not exist: a full-key bloom filter
    # answers those without touching data blocks (measured: a miss 2.2 us -> 0.4 us).
    # A hash data-block index and lz4 were tried and made hits slower, so they are off.
    # No prefix extractor: scope prefixes have no fixed length, so scans use total-order
    # seeks bounded by an upper key instead.
    table.set_bloom_filter(10, False)
    table.set_block_cache(Cache(_BLOCK_CACHE_BYTES))
    # Index and filter blocks stay with their table files, outside the block cache (about
    # 11 bytes a key). Kept in the cache, a large file's index was evicted by data blocks
    # once the view outgrew the cache, and every get re-read it: measured at 200k keys,
    # 520 us a get against 8 us this way.
    opts = Options(raw_mode=True)
    opts.set_block_based_table_factory(table)
    opts.set_keep_log_file_num(3)
    opts.set_max_log_file_size(8 * 1024 * 1024)
    # The offsets column family takes a few bytes per batch and never fills a memtable, so
    # without a cap it would pin every write-ahead log file (seen: 330 MB of them after 200k
    # keys), all replayed at the next open. Past this size RocksDB flushes it.
    opts.set_max_total_wal_size(_MAX_WAL_BYTES)
    return opts


def successor(prefix: bytes) -> bytes | None:
    """The smallest key greater than every key starting with ``prefix`` (None: no such key)."""
    stripped = prefix.rstrip(b"\xff")
    if not stripped:
        return None
    return stripped[:-1] + bytes((stripped[-1] + 1,))


def dir_id(path: str) -> tuple[int, int] | None:
    """The (device, inode) of a dir, or None if it is gone: tells a removed dir from ours."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino)


class Scan:
    """An iterator over a key range that the view cuts off when it closes.

    Holding the rocksdict iterator here, not in a generator frame, lets ``View.close``
    drop it: otherwise an abandoned scan would keep the db and its LOCK open.
    """

    __slots__ = ("__weakref__", "_error", "_opts", "_path", "_rows")

    def __init__(
        self,
        rows: Iterator[Any],
        opts: ReadOptions,
        *,
        path: str,
        error: Callable[[Exception], Exception],
    ) -> None:
        self._path = path
        self._error = error
        self._rows = rows
        # The rocksdict iterator does not keep its ReadOptions alive, and RocksDB reads the
        # upper bound from them on every step: dropping them ends scans early at random.
        self._opts: ReadOptions | None = opts

    def __iter__(self) -> Scan:
        return self

    def __next__(self) -> Any:
        try:
            return next(self._rows)
        except StopIteration:
            self._rows = iter(())
            self._opts = None
            raise
        except Exception as exc:
            raise self._error(exc) from exc

    def cut(self) -> None:
        """Drop the rocksdict iterator; later ``next`` calls raise ClosedError."""
        self._rows = ClosedRows(self._path)
        self._opts = None


class ClosedRows:
    """What a scan reads from once its view is closed."""

    __slots__ = ("_path",)

    def __init__(self, path: str) -> None:
        self._path = path

    def __iter__(self) -> ClosedRows:
        return self

    def __next__(self) -> Any:
        raise ClosedError(f"the view at {self._path} was closed during a scan")


def read_numbers(db: Rdict, cf_name: str, path: str) -> dict[int, int]:
    """A column family of partition -> 8-byte number (offsets, times), read whole."""
    numbers: dict[int, int] = {}
    cf = db.get_column_family(cf_name)
    try:
        for key, value in cf.items():
            (partition,) = PARTITION.unpack(cast(bytes, key))  # raw mode: bytes
            (numbers[partition],) = NUMBER.unpack(value)
    except struct.error as exc:
        raise ViewError(
            f"{path} holds a RocksDB that is not an evstate view (unreadable {cf_name}); "
            "point evstate at another dir, or delete this one to rebuild it"
        ) from exc
    finally:
        cf.close()
    return numbers


def read_pairs(db: Rdict, cf_name: str) -> dict[bytes, bytes]:
    """A small column family of bytes -> bytes, read whole."""
    cf = db.get_column_family(cf_name)
    try:
        return {cast(bytes, key): cast(bytes, value) for key, value in cf.items()}
    finally:
        cf.close()


def open_error(exc: Exception, path: str) -> EvstateError:
    """Translate an exception raised while opening the db at ``path``."""
    text = str(exc)
    if "lock hold by current process" in text:
        return ViewLockedError(
            f"the view dir {path} is already open in this process; share that View "
            "instead of opening the dir twice",
            path=path,
        )
    if "LOCK" in text:
        return ViewLockedError(
            f"the view dir {path} is held by another process (RocksDB LOCK); stop that "
            "process, or give this one its own view dir",
            path=path,
        )
    if "does not exist" in text or "No such file" in text:
        return ViewUnavailableError(
            f"no view in {path} and create=False: {text}; open with create=True",
            path=path,
        )
    if "Permission denied" in text or "Read-only file system" in text:
        return ViewUnavailableError(
            f"the view dir {path} is not writable: {text}; fix its permissions or choose "
            "another dir",
            path=path,
        )
    return ViewError(
        f"RocksDB could not open the view at {path}: {text}; if it is corrupt, delete the "
        "dir and evstate rebuilds it from Kafka"
    )


def distinct_prefixes(db: Rdict, sep: bytes) -> list[bytes]:
    """The distinct key parts before the first ``sep`` in ``db``'s default family, sorted.

    Keys without ``sep`` are left out; each prefix costs one seek, not a walk over its keys.
    """
    found: set[bytes] = set()
    it = db.iter()
    it.seek_to_first()
    while it.valid():
        key: bytes = it.key()
        cut = key.find(sep)
        if cut < 0:
            it.next()
            continue
        found.add(key[:cut])
        after = successor(key[: cut + len(sep)])
        if after is None:
            break
        it.seek(after)
    it.status()
    return sorted(found)


def family_items(db: Rdict, cf_name: str, prefix: bytes) -> list[tuple[bytes, bytes]]:
    """Every ``(key, value)`` of a column family whose key starts with ``prefix``."""
    found: list[tuple[bytes, bytes]] = []
    for key, value in db.get_column_family(cf_name).items(from_key=prefix):
        if not cast(bytes, key).startswith(prefix):
            break
        found.append((cast(bytes, key), cast(bytes, value)))
    return found
