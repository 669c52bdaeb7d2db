"""Record keys and the scope → partition rule.

A record key is ``scope.path + ":" + id``; it is unambiguous because ``:`` is forbidden in
scope names and ids. The partition is the one Kafka's Java default partitioner picks for
a record whose key is the scope's stage (its first two names), so every event of a stage
lands in one partition (totally ordered) and a client in any language can find it.
"""

from __future__ import annotations

import functools
import struct

from evstate.errors import InvalidKeyError, ValidationError
from evstate.model import Scope
from evstate.names import name_problem

__all__ = [
    "IDEMPOTENCY_PREFIX",
    "LEASE_PREFIX",
    "idempotency_key",
    "lease_key",
    "legacy_partition_for",
    "lock_record_key",
    "meta_partition",
    "murmur2",
    "partition_for",
    "record_key",
    "scope_prefix",
    "split_record_key",
    "stage_of",
    "to_positive",
    "validate_idempotency_key",
    "validate_key",
]

_MASK32 = 0xFFFFFFFF
_SEED = 0x9747B28C
_M = 0x5BD1E995
_R = 24


def murmur2(data: bytes) -> int:
    """Hash bytes exactly as Kafka's Java ``org.apache.kafka.common.utils.Utils.murmur2``.

    Args:
        data: The bytes to hash.

    Returns:
        The hash as a signed 32-bit int, the value Java returns.
    """
    length = len(data)
    h = (_SEED ^ length) & _MASK32
    whole = length & ~3
    # Java reads each 4-byte block little-endian; unpacking them at once keeps this fast.
    for k in struct.unpack_from(f"<{whole // 4}I", data):
        k = (k * _M) & _MASK32
        k ^= k >> _R
        k = (k * _M) & _MASK32
        h = ((h * _M) & _MASK32) ^ k
    extra = length & 3
    if extra == 3:
        h ^= data[whole + 2] << 16
    if extra >= 2:
        h ^= data[whole + 1] << 8
    if extra >= 1:
        h ^= data[whole]
        h = (h * _M) & _MASK32
    h ^= h >> 13
    h = (h * _M) & _MASK32
    h ^= h >> 15
    # Java ints are signed; return the same number so vectors compare directly.
    return h - (1 << 32) if h & 0x80000000 else h


def to_positive(n: int) -> int:
    """Return ``n & 0x7fffffff``, as Kafka's ``Utils.toPositive``.

    Args:
        n: A signed 32-bit int, e.g. from :func:`murmur2`.

    Returns:
        A non-negative int below 2**31.
    """
    return n & 0x7FFFFFFF


def stage_of(scope: Scope | str) -> str:
    """Return the stage a scope belongs to: the first two names of its path.

    ``app/prod/db`` → ``app/prod``; a one-name scope is its own stage. The path's
    ``/``-separated segments count as names, so a client that knows only the path finds
    the same stage.
    """
    path = scope.path if isinstance(scope, Scope) else scope
    first = path.find("/")
    if first < 0:
        return path
    second = path.find("/", first + 1)
    return path if second < 0 else path[:second]


def partition_for(scope: Scope | str, partitions: int) -> int:
    """Return the partition every event of ``scope``'s stage goes to.

    The stage (:func:`stage_of`: the first two names of the scope path) is hashed, not
    the record key or the full path, so a stage's whole tree (its states, nested scopes
    and locks) is one totally ordered log.

    Args:
        scope: The scope, or its path.
        partitions: The state topic's partition count.

    Returns:
        ``to_positive(murmur2(stage.encode("utf-8"))) % partitions``.

    Raises:
        ValidationError: ``partitions`` is below 1.
    """
    if isinstance(partitions, bool) or not isinstance(partitions, int) or partitions < 1:
        raise ValidationError(f"partitions must be an int >= 1, got {partitions!r}")
    return _stage_hash(stage_of(scope)) % partitions


@functools.lru_cache(maxsize=16384)
def _stage_hash(stage: str) -> int:
    # murmur2 in Python costs ~10 µs; every write and every read of a stage asks again.
    return to_positive(murmur2(stage.encode("utf-8")))


def legacy_partition_for(scope: Scope | str, partitions: int) -> int:
    """The partition of ``scope`` under the old rule (the full path hashed); for migration."""
    path = scope.path if isinstance(scope, Scope) else scope
    return to_positive(murmur2(path.encode("utf-8"))) % partitions


# Meta keys of the view (``evstate.meta``): they start with NUL, which no record key does.
LEASE_PREFIX = b"\x00L"
IDEMPOTENCY_PREFIX = b"\x00I"
_PARTITION = struct.Struct(">I")


def lock_record_key(path: str) -> bytes:
    """The state-topic key of a scope's lock events: ``path + ":"`` (ids are never empty)."""
    return (path + ":").encode("utf-8")


def lease_key(path: str) -> bytes:
    """The view's key for the lease on ``path``."""
    return LEASE_PREFIX + path.encode("utf-8")


def idempotency_key(partition: int, key: str) -> bytes:
    """The view's key for a write's idempotency key, NUL-terminated (keys have no NUL)."""
    return IDEMPOTENCY_PREFIX + _PARTITION.pack(partition) + key.encode("utf-8") + b"\x00"


def meta_partition(meta_key: bytes, partitions: int) -> int:
    """The partition a meta key belongs to (-1 for an unknown kind)."""
    if meta_key.startswith(LEASE_PREFIX):
        return partition_for(meta_key[len(LEASE_PREFIX) :].decode("utf-8", "replace"), partitions)
    if meta_key.startswith(IDEMPOTENCY_PREFIX):
        return int(_PARTITION.unpack_from(meta_key, len(IDEMPOTENCY_PREFIX))[0])
    return -1


def validate_idempotency_key(key: object) -> str:
    """Refuse an idempotency key that is not 1-200 printable characters.

    Raises:
        ValidationError: what is wrong with it.
    """
    if not isinstance(key, str) or not 0 < len(key) <= 200 or not key.isprintable():
        raise ValidationError(
            f"invalid idempotency key {key!r}: give 1 to 200 printable characters, e.g. a uuid"
        )
    return key


def validate_key(key: object) -> None:
    """Refuse a key that cannot be an id in a record key.

    Args:
        key: The candidate key.

    Keys follow the rule of scope names (:func:`evstate.names.name_problem`): they may
    hold ``/``, but not as an empty, ``.`` or ``..`` segment.

    Raises:
        InvalidKeyError: ``key`` is not a str, is empty, contains ``:``, a control
            character or a lone surrogate, or has an empty, ``.`` or ``..`` segment.
    """
    if not isinstance(key, str):
        raise InvalidKeyError(f"a key must be a str, got {type(key).__name__}")
    if not key:
        raise InvalidKeyError("a key must not be empty")
    if ":" in key:
        raise InvalidKeyError(f"a key must not contain ':', got {key!r}")
    problem = name_problem(key)
    if problem is not None:
        raise InvalidKeyError(f"invalid key {key!r}: it {problem}")


def record_key(scope: Scope, key: str) -> str:
    """Return the record key (and RocksDB key) for ``key`` in ``scope``.

    Args:
        scope: The scope.
        key: The state's id; may contain ``/``.

    Returns:
        ``scope.path + ":" + key``.

    Raises:
        InvalidKeyError: ``key`` is invalid (see :func:`validate_key`).
    """
    validate_key(key)
    return f"{scope.path}:{key}"


def scope_prefix(scope: Scope) -> str:
    """Return the prefix shared by every record key directly in ``scope``.

    Nested scopes (``path/child:``) never match it, so a prefix scan lists one scope.

    Args:
        scope: The scope.

    Returns:
        ``scope.path + ":"``.
    """
    return f"{scope.path}:"


def split_record_key(rk: str) -> tuple[tuple[str, ...], str]:
    """Split a record key into scope chain and key.

    The split is at the first ``:`` since neither part may contain one. The chain comes
    from ``path.split("/")``, which is lossy: a scope name that itself contains ``/``
    (e.g. ``Scope("a/b")``) comes back as two names (``("a", "b")``). The path, and so the
    partition and prefix, are the same either way.

    Args:
        rk: A record key from :func:`record_key`.

    Returns:
        ``(chain, key)``.

    Raises:
        InvalidKeyError: ``rk`` is not a str, has no ``:``, or either part is empty.
    """
    if not isinstance(rk, str):
        raise InvalidKeyError(f"a record key must be a str, got {type(rk).__name__}")
    path, sep, key = rk.partition(":")
    if not sep or not path or not key or ":" in key:
        raise InvalidKeyError(f"invalid record key {rk!r}; expected 'scope/path:key'")
    chain = tuple(path.split("/"))
    if not all(chain):
        raise InvalidKeyError(f"invalid record key {rk!r}: empty scope name")
    return chain, key
