"""evstate.secrets: Alchemy's AES-256-GCM format, key caching, and the errors."""

from __future__ import annotations

import asyncio
import base64
import time

import pytest

from evstate import secrets
from evstate.errors import SecretError, SerdeError

# Written by Alchemy 0.94.0 (tests/node/alchemy_app.mjs) with password "pw123".
ALCHEMY_PAYLOAD = {
    "version": "v1",
    "ciphertext": "NB3IOPjqwgIyjHEsD1LHSA==",
    "iv": "hwFV0WTENk77idqi",
    "salt": "ZI26EEEFzG+3gMF4RmwErA==",
    "tag": "dzurcGZm8lSAkSyRN3kRsw==",
}
ALCHEMY_PLAINTEXT = "s3cr3t-token ☃"


def test_reads_a_payload_alchemy_wrote() -> None:
    assert secrets.decrypt(ALCHEMY_PAYLOAD, "pw123") == ALCHEMY_PLAINTEXT


def test_payload_shape() -> None:
    payload = secrets.encrypt("hello", "pw")
    assert list(payload) == ["version", "ciphertext", "iv", "salt", "tag"]
    assert payload["version"] == "v1"
    sizes = {
        name: len(base64.b64decode(payload[name], validate=True))
        for name in payload
        if name != "version"
    }
    assert sizes == {"ciphertext": 5, "iv": 12, "salt": 16, "tag": 16}


@pytest.mark.parametrize(
    "plaintext", ["", " ", "\t\n", "ünïcødé ☃ 🔑", "line\nline\r\n", "z" * 1000, "\x00"]
)
def test_round_trip(plaintext: str) -> None:
    assert secrets.decrypt(secrets.encrypt(plaintext, "pw"), "pw") == plaintext


def test_two_encryptions_differ() -> None:
    one, two = secrets.encrypt("same", "pw"), secrets.encrypt("same", "pw")
    assert one["iv"] != two["iv"]
    assert one["ciphertext"] != two["ciphertext"]


def test_salt_is_reused_per_password_but_iv_never() -> None:
    payloads = [secrets.encrypt("x", "reuse-pw") for _ in range(50)]
    assert len({p["salt"] for p in payloads}) == 1
    assert len({p["iv"] for p in payloads}) == 50
    assert secrets.encrypt("x", "other-pw")["salt"] != payloads[0]["salt"]


def test_salt_rotates_after_its_uses(monkeypatch: pytest.MonkeyPatch) -> None:
    secrets.clear_cache()
    monkeypatch.setattr(secrets, "_SALT_USES", 2)
    salts = [secrets.encrypt("x", "rotate-pw")["salt"] for _ in range(5)]
    assert salts[0] == salts[1] != salts[2] == salts[3] != salts[4]
    secrets.clear_cache()


def test_wrong_password() -> None:
    with pytest.raises(SecretError, match=r"props\.db\.password.*wrong password"):
        secrets.decrypt(secrets.encrypt("x", "right"), "wrong", path="props.db.password")


def test_missing_password() -> None:
    with pytest.raises(SecretError, match="without a password"):
        secrets.decrypt(secrets.encrypt("x", "pw"), None, path="a")


@pytest.mark.parametrize("password", ["", 5])
def test_bad_password(password: object) -> None:
    with pytest.raises(SecretError, match="non-empty str"):
        secrets.encrypt("x", password)  # type: ignore[arg-type]


def test_tampered_tag_is_refused() -> None:
    payload = secrets.encrypt("x", "pw")
    tag = bytearray(base64.b64decode(payload["tag"]))
    tag[0] ^= 1
    payload["tag"] = base64.b64encode(bytes(tag)).decode()
    with pytest.raises(SecretError, match="altered"):
        secrets.decrypt(payload, "pw")


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"version": "v2"}, "version"),
        ({"iv": "***"}, "'iv' is not base64"),
        ({"salt": None}, "'salt' missing"),
        ({"iv": base64.b64encode(b"short").decode()}, "12 bytes"),
        ({"tag": base64.b64encode(b"t" * 8).decode()}, "12 bytes"),
    ],
)
def test_malformed_payload(change: dict[str, object], match: str) -> None:
    payload: dict[str, object] = {**secrets.encrypt("x", "pw"), **change}
    with pytest.raises(SerdeError, match=match) as info:
        secrets.decrypt(payload, "pw", path="p.q")
    assert "p.q" in str(info.value)
    assert not isinstance(info.value, SecretError)


def test_not_an_object() -> None:
    with pytest.raises(SerdeError, match="expected an object"):
        secrets.decrypt(7, "pw")


def test_legacy_libsodium_string_is_named() -> None:
    with pytest.raises(SecretError, match="legacy libsodium"):
        secrets.decrypt("bm9uY2VjaXBoZXJ0ZXh0", "pw", path="x")


def test_keys_are_cached_per_password_and_salt() -> None:
    secrets.clear_cache()
    payload = secrets.encrypt("x", "cache-pw")  # one scrypt
    start = time.perf_counter()
    for _ in range(100):
        secrets.decrypt(payload, "cache-pw")
        secrets.encrypt("y", "cache-pw")
    per_op = (time.perf_counter() - start) / 200
    assert per_op < 0.005  # a scrypt takes tens of ms; a cached op takes microseconds


def test_secret_salts_walks_markers() -> None:
    one, two = secrets.encrypt("a", "pw"), dict(ALCHEMY_PAYLOAD)
    tree = {"a": [{"@secret": one}], "b": {"@secret": {"data": two}}, "c": {"@secret": "x"}}
    assert secrets.secret_salts(tree) == {
        base64.b64decode(one["salt"]),
        base64.b64decode(two["salt"]),
    }


async def test_warm_derives_off_the_loop() -> None:
    secrets.clear_cache()
    tree = {"s": {"@secret": ALCHEMY_PAYLOAD}}
    ticks = 0

    async def tick() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.001)
            ticks += 1

    ticker = asyncio.create_task(tick())
    await secrets.warm("pw123", tree)
    ticker.cancel()
    assert ticks > 0  # the loop kept running while scrypt ran in a thread
    # Both keys are cached now: nothing left for warm to do, decrypt is immediate.
    start = time.perf_counter()
    await secrets.warm("pw123", tree)
    assert secrets.decrypt(ALCHEMY_PAYLOAD, "pw123") == ALCHEMY_PLAINTEXT
    secrets.encrypt("x", "pw123")
    assert time.perf_counter() - start < 0.005


async def test_warm_without_password_is_a_no_op() -> None:
    await secrets.warm(None, {"s": {"@secret": ALCHEMY_PAYLOAD}})
