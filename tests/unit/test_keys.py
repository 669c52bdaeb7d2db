"""Record keys and the scope → partition rule, checked against Kafka's own Java murmur2."""

from __future__ import annotations

import random

import pytest

from evstate.errors import InvalidKeyError, ValidationError
from evstate.keys import (
    legacy_partition_for,
    murmur2,
    partition_for,
    record_key,
    scope_prefix,
    split_record_key,
    stage_of,
    to_positive,
    validate_key,
)
from evstate.model import Scope

LONG = "".join(chr(ord("a") + i % 26) for i in range(300))

# Produced by a throwaway Java program calling Kafka 4.1.1's (kafka-clients-4.1.1.jar)
# org.apache.kafka.common.utils.Utils.murmur2 on s.getBytes(UTF_8), and
# Utils.toPositive(h) % n for n = 3, 12, 50 (for n = 1 every partition is 0).
# (string, murmur2, partition of 3, of 12, of 50)
JAVA_VECTORS = [
    ("", 275646681, 0, 9, 31),
    ("a", -1563381124, 1, 4, 24),
    ("ab", 316155434, 2, 2, 34),
    ("abc", 479470107, 0, 3, 7),
    ("abcd", -1323649548, 2, 8, 0),
    ("abcde", 461995741, 1, 1, 41),
    ("app", -440325113, 0, 3, 35),
    ("app/prod", 2057852281, 1, 1, 31),
    ("app/prod/child", 1963303102, 1, 10, 2),
    ("my-app/dev", -2062659493, 1, 7, 5),
    ("hello world", 1221641059, 1, 7, 9),
    ("scope:key", -1814650224, 2, 8, 24),
    ("évstate", -1545158820, 2, 8, 28),
    ("日本語/スコープ", 259953681, 0, 9, 31),
    ("emoji/😀", 318762768, 0, 0, 18),
    ("a/b/c/d/e/f/g", 1328204005, 1, 1, 5),
    ("0123456789", -631703640, 2, 8, 8),
    ("evstate", 312927898, 1, 10, 48),
    ("kafka", -798503068, 1, 4, 30),
    ("x/y:z/w", 867018287, 2, 11, 37),
    (LONG, -1119856935, 2, 5, 13),
]


def _int32(n: int) -> int:
    n &= 0xFFFFFFFF
    return n - (1 << 32) if n >= 1 << 31 else n


def _reference_murmur2(data: bytes) -> int:
    """A line-by-line transliteration of the Java source, with Java's int overflow."""
    length = len(data)
    seed = _int32(0x9747B28C)
    m = 0x5BD1E995
    r = 24
    h = _int32(seed ^ length)
    for i in range(length // 4):
        i4 = i * 4
        k = (
            (data[i4] & 0xFF)
            + ((data[i4 + 1] & 0xFF) << 8)
            + ((data[i4 + 2] & 0xFF) << 16)
            + ((data[i4 + 3] & 0xFF) << 24)
        )
        k = _int32(k * m)
        k = _int32(k ^ ((k & 0xFFFFFFFF) >> r))
        k = _int32(k * m)
        h = _int32(h * m)
        h = _int32(h ^ k)
    rest = length % 4
    base = length & ~3
    if rest == 3:
        h = _int32(h ^ ((data[base + 2] & 0xFF) << 16))
    if rest >= 2:
        h = _int32(h ^ ((data[base + 1] & 0xFF) << 8))
    if rest >= 1:
        h = _int32(h ^ (data[base] & 0xFF))
        h = _int32(h * m)
    h = _int32(h ^ ((h & 0xFFFFFFFF) >> 13))
    h = _int32(h * m)
    h = _int32(h ^ ((h & 0xFFFFFFFF) >> 15))
    return h


@pytest.mark.parametrize(("text", "java_hash", "p3", "p12", "p50"), JAVA_VECTORS)
def test_murmur2_matches_java(text: str, java_hash: int, p3: int, p12: int, p50: int) -> None:
    assert murmur2(text.encode("utf-8")) == java_hash
    assert legacy_partition_for(text, 1) == 0
    assert legacy_partition_for(text, 3) == p3
    assert legacy_partition_for(text, 12) == p12
    assert legacy_partition_for(text, 50) == p50
    if text.count("/") < 2:  # a stage's own path: both rules agree
        assert partition_for(text, 12) == p12


def test_murmur2_matches_reference_on_random_bytes() -> None:
    rng = random.Random(20240601)
    for _ in range(500):
        data = rng.randbytes(rng.randrange(0, 70))
        assert murmur2(data) == _reference_murmur2(data), data.hex()


def test_murmur2_is_signed_32_bit() -> None:
    rng = random.Random(7)
    values = [murmur2(rng.randbytes(12)) for _ in range(200)]
    assert all(-(2**31) <= v < 2**31 for v in values)
    assert any(v < 0 for v in values)


def test_to_positive() -> None:
    assert to_positive(-1) == 0x7FFFFFFF
    assert to_positive(-(2**31)) == 0
    assert to_positive(5) == 5


def test_partition_for_hashes_the_stage() -> None:
    scope = Scope("app", "prod", "child")
    assert stage_of(scope) == "app/prod"
    assert stage_of("app") == "app"
    assert stage_of("app/prod") == "app/prod"
    assert stage_of("a/b/c/d") == "a/b"
    assert partition_for(scope, 12) == 1  # "app/prod" from JAVA_VECTORS
    assert legacy_partition_for(scope, 12) == 10  # "app/prod/child": the old rule
    assert partition_for(scope, 12) == partition_for("app/prod/child/deeper", 12)
    # The record key is not what is hashed: every key of a one-name scope shares its partition.
    assert partition_for(record_key(Scope("app"), "y"), 12) != partition_for(Scope("app"), 12)


def test_partition_for_ignores_password() -> None:
    assert partition_for(Scope("app", password="a"), 50) == partition_for(Scope("app"), 50)


@pytest.mark.parametrize("partitions", [0, -3, True])
def test_partition_for_bad_count(partitions: int) -> None:
    with pytest.raises(ValidationError, match="partitions"):
        partition_for("app", partitions)


class TestRecordKeys:
    def test_record_key(self) -> None:
        assert record_key(Scope("app", "dev"), "bucket") == "app/dev:bucket"

    def test_ids_with_slash(self) -> None:
        rk = record_key(Scope("app", "dev"), "vpc/subnet/1")
        assert rk == "app/dev:vpc/subnet/1"
        assert split_record_key(rk) == (("app", "dev"), "vpc/subnet/1")

    def test_scope_prefix(self) -> None:
        scope = Scope("app", "dev")
        assert scope_prefix(scope) == "app/dev:"
        assert record_key(scope, "k").startswith(scope_prefix(scope))
        # A nested scope's keys do not share the parent's prefix.
        assert not record_key(scope.child("inner"), "k").startswith(scope_prefix(scope))

    def test_split_round_trip(self) -> None:
        scope = Scope("app", "stage", "nested")
        assert split_record_key(record_key(scope, "id-1")) == (scope.chain, "id-1")

    def test_split_of_slash_in_scope_name_is_lossy(self) -> None:
        scope = Scope("a/b", "c")
        chain, key = split_record_key(record_key(scope, "k"))
        assert chain == ("a", "b", "c")
        assert key == "k"
        assert "/".join(chain) == scope.path

    @pytest.mark.parametrize("rk", ["nocolon", ":k", "app:", "app:k:x", "app//x:k", ""])
    def test_split_refuses(self, rk: str) -> None:
        with pytest.raises(InvalidKeyError):
            split_record_key(rk)

    def test_split_error_is_validation_error(self) -> None:
        with pytest.raises(ValidationError):
            split_record_key("plain")

    @pytest.mark.parametrize("key", ["", "a:b", ":", 5, None, b"k"])
    def test_validate_key_refuses(self, key: object) -> None:
        with pytest.raises(InvalidKeyError):
            validate_key(key)

    @pytest.mark.parametrize("key", ["k", "a/b", "é", "with space", "Symbol(x)"])
    def test_validate_key_accepts(self, key: str) -> None:
        validate_key(key)

    def test_record_key_refuses_colon(self) -> None:
        with pytest.raises(InvalidKeyError, match="a:b"):
            record_key(Scope("app"), "a:b")
