"""Secret encryption, byte-compatible with Alchemy's ``encrypt.ts`` (alchemy 0.94.0).

The only module that imports ``cryptography``. :func:`encrypt` and :func:`decrypt` turn a
string into the payload of an ``{"@secret": ...}`` marker and back::

    {"version": "v1", "ciphertext": b64, "iv": b64, "salt": b64, "tag": b64}

AES-256-GCM; key = scrypt(password as UTF-8, salt, N=16384, r=8, p=1, 32 bytes); 16-byte
salt, 12-byte IV, 16-byte tag; standard base64 with padding. Alchemy reads the salt from
each payload and derives the key from it, so anything written here opens in Alchemy with
the same password, and the other way round.

Speed. scrypt costs tens of milliseconds (it is meant to), so it is never paid per value:

* **Reading**: derived keys are cached per ``(password, salt)`` (LRU, :data:`_CACHE_SIZE`
  entries). A payload written by this process, or by any writer that reused a salt,
  costs one AES-GCM decryption. Alchemy itself draws a fresh salt per value, so each
  secret it wrote costs one scrypt the first time a process reads it.
* **Writing**: Alchemy draws a fresh salt per value and so pays one scrypt per secret.
  We keep one salt (and its key) per password and reuse it for up to
  :data:`_SALT_USES` encryptions, then draw a new one; a process starts with none.
  The IV is fresh (``os.urandom(12)``) for every encryption, which is what AES-GCM's
  security rests on: random 96-bit IVs under one key stay far inside NIST's 2**32
  messages-per-key bound at 2**20 uses. The salt is a public KDF input; sharing it
  between values reveals nothing about their plaintexts. Readers (Alchemy included)
  cannot tell the difference, because the salt still travels with every payload.

The first derivation for a password happens inside :func:`encrypt`/:func:`decrypt` if
nothing warmed the cache, which blocks the calling thread for that one scrypt. Async
callers avoid stalling the event loop by awaiting :func:`warm` first: it derives the
write key and the keys of every secret in a serialized tree in a worker thread.

Secrets at rest for Alchemy v2 (:class:`SecretKeys`): v2 sends secret values to the
store in plaintext, so ``evstate serve`` seals them with a key of its own before they
reach Kafka: AES-256-GCM, a fresh 12-byte IV per value, the record's place (stack,
stage, key) as associated data, and the key's id in the payload so keys can rotate (the
first key of the ring seals, every key opens)::

    {"alg": "A256GCM", "kid": "k2", "iv": b64, "ct": b64 (ciphertext + tag)}

Legacy format: Alchemy 0.94.0 still *reads* a string payload (``{"@secret": "<b64>"}``)
as libsodium ``crypto_secretbox`` (XSalsa20-Poly1305, key = BLAKE2b-256 of the password).
It never writes it any more; evstate refuses it with a clear :class:`SecretError`.
"""

from __future__ import annotations

import asyncio
import binascii
import contextlib
import os
import re
import threading
from collections import OrderedDict
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from evstate.errors import ConfigError, SealedSecretError, SecretError, SerdeError

__all__ = [
    "SecretKeys",
    "check_payload",
    "clear_cache",
    "decrypt",
    "encrypt",
    "new_secret_key",
    "secret_salts",
    "warm",
]

_KEY_LEN = 32
_SCRYPT_N = 16384
_SCRYPT_R = 8
_SCRYPT_P = 1
_SALT_LEN = 16
_IV_LEN = 12
_TAG_LEN = 16
_VERSION = "v1"
_FIELDS = ("ciphertext", "iv", "salt", "tag")

_CACHE_SIZE = 1024
"""How many derived keys are kept; a state store process rarely meets more salts."""

_SALT_USES = 2**20
"""Encryptions per write salt before a new salt (and one scrypt) is drawn."""

_lock = threading.Lock()
_keys: OrderedDict[tuple[str, bytes], AESGCM] = OrderedDict()
# password -> [salt, cipher, encryptions left]
_writers: dict[str, list[Any]] = {}


def _derive(password: str, salt: bytes) -> AESGCM:
    """The cipher for ``(password, salt)``, from the cache or one scrypt."""
    cache_key = (password, salt)
    with _lock:
        cipher = _keys.get(cache_key)
        if cipher is not None:
            _keys.move_to_end(cache_key)
            return cipher
    # Derive outside the lock: two threads may race to derive the same key, which only
    # costs time, while holding the lock would serialize every scrypt in the process.
    kdf = Scrypt(salt=salt, length=_KEY_LEN, n=_SCRYPT_N, r=_SCRYPT_R, p=_SCRYPT_P)
    cipher = AESGCM(kdf.derive(password.encode("utf-8")))
    with _lock:
        _keys[cache_key] = cipher
        while len(_keys) > _CACHE_SIZE:
            _keys.popitem(last=False)
    return cipher


def _writer(password: str, *, use: bool = True) -> tuple[bytes, AESGCM]:
    """The salt and cipher to encrypt with now; draws a new salt when the old is used up.

    ``use=False`` only makes sure one is ready (for :func:`warm`).
    """
    with _lock:
        entry = _writers.get(password)
        if entry is not None and entry[2] > 0:
            entry[2] -= int(use)
            return entry[0], entry[1]
    salt = os.urandom(_SALT_LEN)
    cipher = _derive(password, salt)
    with _lock:
        _writers[password] = [salt, cipher, _SALT_USES - int(use)]
    return salt, cipher


def _b64(data: bytes) -> str:
    return binascii.b2a_base64(data, newline=False).decode("ascii")


def encrypt(plaintext: str, password: str) -> dict[str, str]:
    """Encrypt ``plaintext`` as Alchemy's ``encrypt(value, passphrase)`` does.

    Args:
        plaintext: The text to encrypt (UTF-8 encoded before encryption).
        password: The scope's password.

    Returns:
        ``{"version": "v1", "ciphertext", "iv", "salt", "tag"}``, base64 values.

    Raises:
        SecretError: ``password`` is empty or not a str.
    """
    _check_password(password)
    salt, cipher = _writer(password)
    iv = os.urandom(_IV_LEN)
    sealed = cipher.encrypt(iv, plaintext.encode("utf-8"), None)
    return {
        "version": _VERSION,
        "ciphertext": _b64(sealed[:-_TAG_LEN]),
        "iv": _b64(iv),
        "salt": _b64(salt),
        "tag": _b64(sealed[-_TAG_LEN:]),
    }


def _where(path: str) -> str:
    return path or "the top level"


def _parts(payload: object, path: str) -> dict[str, bytes]:
    """The decoded fields of a v1 payload.

    Raises:
        SecretError: the legacy libsodium format (a string payload).
        SerdeError: anything else that is not a well-formed v1 payload.
    """
    if isinstance(payload, str):
        raise SecretError(
            f"secret at {_where(path)} is in Alchemy's legacy libsodium format, which "
            "evstate does not read; open and save the state with Alchemy first, which "
            "rewrites it as AES-256-GCM (v1)"
        )
    if not isinstance(payload, dict):
        raise SerdeError(
            f"malformed @secret marker at {_where(path)}: expected an object, "
            f"got {type(payload).__name__}"
        )
    version = payload.get("version")
    if version != _VERSION:
        raise SerdeError(
            f"malformed @secret marker at {_where(path)}: version {version!r} is not {_VERSION!r}"
        )
    parts: dict[str, bytes] = {}
    for name in _FIELDS:
        text = payload.get(name)
        if not isinstance(text, str):
            raise SerdeError(f"malformed @secret marker at {_where(path)}: {name!r} missing")
        try:
            # What base64.b64decode(validate=True) accepts, without its regex per call.
            parts[name] = binascii.a2b_base64(text, strict_mode=True)
        except (binascii.Error, ValueError):
            raise SerdeError(
                f"malformed @secret marker at {_where(path)}: {name!r} is not base64"
            ) from None
    # Node accepts other IV and tag lengths for GCM, but Alchemy writes only these;
    # anything else is damage, not a format to honour.
    if len(parts["iv"]) != _IV_LEN or len(parts["tag"]) != _TAG_LEN or not parts["salt"]:
        raise SerdeError(
            f"malformed @secret marker at {_where(path)}: iv must be {_IV_LEN} bytes, tag "
            f"{_TAG_LEN}, salt non-empty"
        )
    return parts


def check_payload(payload: object, *, path: str = "") -> None:
    """Refuse an ``@secret`` payload that no password could open, without a password.

    Args:
        payload: The value of an ``@secret`` marker (or of its ``data`` field).
        path: Where the marker sits, for error messages.

    Raises:
        SecretError: the legacy libsodium format (a string payload).
        SerdeError: anything else that is not a well-formed v1 payload.
    """
    _parts(payload, path)


def decrypt(payload: object, password: str | None, *, path: str = "") -> str:
    """Decrypt a v1 payload written by :func:`encrypt` or by Alchemy.

    Args:
        payload: The value of an ``@secret`` marker (or of its ``data`` field).
        password: The scope's password.
        path: Where the marker sits, for error messages (``props.db.password``).

    Returns:
        The plaintext.

    Raises:
        SecretError: no password, a wrong password (or a tampered payload: AES-GCM cannot
            tell the two apart), the legacy libsodium format, or plaintext that is not
            UTF-8.
        SerdeError: the payload is not a well-formed v1 payload.
    """
    parts = _parts(payload, path)
    if password is None:
        raise SecretError(
            f"secret at {_where(path)} cannot be read without a password: give the "
            "scope one (Scope(..., password=...))"
        )
    _check_password(password)
    cipher = _derive(password, parts["salt"])
    try:
        plain = cipher.decrypt(parts["iv"], parts["ciphertext"] + parts["tag"], None)
    except InvalidTag:
        raise SecretError(
            f"secret at {_where(path)} could not be decrypted: wrong password, or the "
            "stored secret was altered"
        ) from None
    try:
        return plain.decode("utf-8")
    except UnicodeDecodeError:
        raise SecretError(
            f"secret at {_where(path)} decrypted to bytes that are not UTF-8"
        ) from None


def _check_password(password: object) -> None:
    if not isinstance(password, str) or not password:
        raise SecretError("a secrets password must be a non-empty str")


def secret_salts(tree: object) -> set[bytes]:
    """The salts of every well-formed v1 secret in a serialized tree.

    Malformed markers are skipped here; :func:`decrypt` reports them with their path.

    Args:
        tree: A serialized tree (``serde.serialize`` output or a stored state).

    Returns:
        The distinct salts, decoded.
    """
    found: set[bytes] = set()
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, list):
            stack.extend(node)
        elif isinstance(node, dict):
            marker = node.get("@secret")
            if marker is None:
                stack.extend(node.values())
                continue
            if isinstance(marker, dict) and "data" in marker:
                marker = marker["data"]
            if isinstance(marker, dict) and isinstance(marker.get("salt"), str):
                with contextlib.suppress(binascii.Error, ValueError):
                    found.add(binascii.a2b_base64(marker["salt"], strict_mode=True))
    return found


def _warm_sync(password: str, salts: set[bytes]) -> None:
    _writer(password, use=False)
    for salt in salts:
        _derive(password, salt)


async def warm(password: str | None, tree: object = None) -> None:
    """Derive, in a worker thread, every key a coming (de)serialization will need.

    Call it from async code before :func:`evstate.serde.serialize` (the write key of
    ``password``) or :func:`evstate.serde.deserialize` of ``tree`` (the key of each salt
    in it), so the scrypt runs off the event loop. When every key is cached it returns
    without starting a thread.

    Args:
        password: The scope's password; ``None`` makes this a no-op.
        tree: A serialized tree about to be deserialized, or ``None``.

    Raises:
        SecretError: ``password`` is empty or not a str.
    """
    if password is None:
        return
    _check_password(password)
    salts = secret_salts(tree) if tree is not None else set()
    with _lock:
        entry = _writers.get(password)
        ready = entry is not None and entry[2] > 0
        missing = {s for s in salts if (password, s) not in _keys}
    if ready and not missing:
        return
    await asyncio.to_thread(_warm_sync, password, missing)


def clear_cache() -> None:
    """Forget every derived key and write salt (tests, or after rotating a password)."""
    with _lock:
        _keys.clear()
        _writers.clear()


# -- secrets at rest for Alchemy v2 ---------------------------------------------------

_SEAL_ALG = "A256GCM"
_KID = re.compile(r"[A-Za-z0-9_.-]{1,64}")


class SecretKeys:
    """The server's AES-256 keys for Alchemy v2 secrets at rest, by key id.

    The first key seals; every key opens, so a key is rotated by putting a new one first
    and keeping the old one until no stored record needs it.
    """

    def __init__(self, keys: list[tuple[str, bytes]]) -> None:
        """Args:
            keys: ``(key id, 32-byte key)`` pairs, the sealing key first.

        Raises:
            ConfigError: no key, a key id used twice or not ``[A-Za-z0-9_.-]{1,64}``, or
                a key that is not 32 bytes.
        """
        if not keys:
            raise ConfigError("secret keys: give at least one key")
        self._ciphers: dict[str, AESGCM] = {}
        for kid, key in keys:
            if not _KID.fullmatch(kid):
                raise ConfigError(
                    f"secret keys: key id {kid[:70]!r} must be 1-64 of A-Z a-z 0-9 _ . -"
                )
            if kid in self._ciphers:
                raise ConfigError(f"secret keys: key id {kid!r} is given twice")
            if len(key) != _KEY_LEN:
                raise ConfigError(
                    f"secret keys: key {kid!r} is {len(key)} bytes; AES-256 wants {_KEY_LEN}"
                )
            self._ciphers[kid] = AESGCM(key)
        self.current = keys[0][0]

    def __repr__(self) -> str:
        return f"SecretKeys(current={self.current!r}, ids={list(self._ciphers)!r})"

    @classmethod
    def parse(cls, text: str, source: str) -> SecretKeys:
        """Keys from text: ``<key id>:<base64 of 32 bytes>`` entries, separated by
        newlines or commas (``#`` starts a comment); the first seals.

        Args:
            text: the key file's content, or the environment variable's value.
            source: where it came from, for messages (never a key).

        Raises:
            ConfigError: an entry that is not ``id:base64``, or what :meth:`__init__` refuses.
        """
        keys: list[tuple[str, bytes]] = []
        entries = (
            e.strip() for line in text.splitlines() for e in line.partition("#")[0].split(",")
        )
        for number, entry in enumerate((e for e in entries if e), 1):
            kid, sep, b64 = entry.partition(":")
            try:
                key = binascii.a2b_base64(b64.strip(), strict_mode=True) if sep else b""
            except (binascii.Error, ValueError):
                key = b""
            if not sep or not key:
                raise ConfigError(
                    f"{source}: entry {number} is not <key id>:<base64 of 32 bytes> "
                    "(make one with `evstate secret-key`)"
                )
            keys.append((kid.strip(), key))
        try:
            return cls(keys)
        except ConfigError as exc:
            raise ConfigError(f"{source}: {exc}") from None

    def seal(self, plaintext: bytes, where: bytes) -> dict[str, str]:
        """Encrypt ``plaintext`` with the current key, bound to ``where``."""
        iv = os.urandom(_IV_LEN)
        sealed = self._ciphers[self.current].encrypt(iv, plaintext, where)
        return {"alg": _SEAL_ALG, "kid": self.current, "iv": _b64(iv), "ct": _b64(sealed)}

    def open(self, payload: object, where: bytes) -> bytes:
        """The plaintext of a payload from :meth:`seal` with the same ``where``.

        Raises:
            SealedSecretError: not such a payload, an unknown key id, or one that does not
                open (altered, or sealed for another place).
        """
        if not isinstance(payload, dict) or payload.get("alg") != _SEAL_ALG:
            raise SealedSecretError("a sealed secret is malformed (no A256GCM payload)")
        kid = payload.get("kid")
        cipher = self._ciphers.get(kid) if isinstance(kid, str) else None
        if cipher is None:
            raise SealedSecretError(
                f"a sealed secret names key id {str(kid)[:70]!r}, which the server does not "
                f"have (its keys: {', '.join(self._ciphers)}); add it back to the ring"
            )
        try:
            iv = binascii.a2b_base64(str(payload.get("iv")), strict_mode=True)
            data = binascii.a2b_base64(str(payload.get("ct")), strict_mode=True)
            return cipher.decrypt(iv, data, where)
        except (binascii.Error, ValueError, InvalidTag):
            raise SealedSecretError(
                f"a sealed secret (key {kid!r}) does not open: altered, or sealed for "
                "another record"
            ) from None


def new_secret_key(kid: str) -> str:
    """A fresh key entry for :meth:`SecretKeys.parse`: ``<kid>:<base64 of 32 random bytes>``.

    Raises:
        ConfigError: ``kid`` is not 1-64 of ``A-Z a-z 0-9 _ . -``.
    """
    entry = f"{kid}:{_b64(os.urandom(_KEY_LEN))}"
    SecretKeys.parse(entry, "the new key")
    return entry
