"""The values behind Alchemy's markers, one at a time, and how a path is spelled in errors.

:mod:`evstate.serde` walks trees; this module turns one value into its marker's payload
and back: a tz-aware ``datetime`` ↔ ``@date`` text, bytes ↔ ``@buffer`` base64, a
:class:`Secret` ↔ its ``@secret`` payload (encrypted by :mod:`evstate.secrets`). A
:data:`TreePath` is where a value sits, rendered (``props.db['a b'][3]``) only for a message.
"""

from __future__ import annotations

import binascii
import json
from datetime import UTC, datetime
from typing import Any

from evstate import secrets
from evstate.errors import SecretError, SerdeError, UnserializableError
from evstate.model import Scope

__all__ = [
    "Secret",
    "TreePath",
    "decrypt_secret",
    "encode_buffer",
    "encrypt_secret",
    "format_date",
    "from_marker",
    "key_path",
    "parse_buffer",
    "parse_date",
    "render_path",
    "where",
]


class Secret:
    """A value stored encrypted: ``{"@secret": ...}`` in every tree, never plaintext.

    As Alchemy's ``Secret``: the value is ``unencrypted``; ``repr``, ``str`` and f-strings
    show ``Secret(****)``. Two secrets are equal when their values are.

    Args:
        unencrypted: The value: a str, or anything JSON can hold (dict, list, number,
            bool, None), which is stored as its JSON text.
    """

    # Defining __eq__ leaves Secret unhashable, as it should be: the value may be a dict.
    __slots__ = ("_unencrypted",)

    def __init__(self, unencrypted: Any) -> None:
        self._unencrypted = unencrypted

    @property
    def unencrypted(self) -> Any:
        """The plaintext value."""
        return self._unencrypted

    def __repr__(self) -> str:
        return "Secret(****)"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Secret):
            return NotImplemented
        return bool(self._unencrypted == other._unencrypted)


# Paths are built on every step of a walk but read only when something fails, so a step
# is a cheap (parent, key) pair, rendered to "props.db['a b'][3]" only for a message.
TreePath = str | tuple[Any, str | int]


def key_path(path: TreePath, key: str | int) -> TreePath:
    """The path one step below ``path``: a dict key (str) or a list index (int)."""
    return (path, key)


def render_path(path: TreePath) -> str:
    """``path`` as callers write it: ``props.db['a b'][3]``; ``""`` for the top level."""
    keys: list[str | int] = []
    while isinstance(path, tuple):
        path, key = path
        keys.append(key)
    out = path
    for key in reversed(keys):
        if isinstance(key, int):
            out = f"{out}[{key}]"
        elif key.isidentifier():
            out = f"{out}.{key}" if out else key
        else:
            out = f"{out}[{key!r}]"
    return out


def where(path: TreePath) -> str:
    """``path`` for a message: rendered, or ``"the top level"``."""
    return render_path(path) or "the top level"


def format_date(value: datetime, path: TreePath) -> str:
    """The ``@date`` text of ``value``, as JavaScript's ``toISOString`` writes it.

    Args:
        value: A tz-aware datetime; it is written in UTC, to the millisecond.
        path: Where it sits, for error messages.

    Returns:
        ``"YYYY-MM-DDTHH:MM:SS.mmmZ"``.

    Raises:
        UnserializableError: ``value`` is naive, or out of range once in UTC.
    """
    if value.tzinfo is not UTC:
        if value.tzinfo is None or value.utcoffset() is None:
            # A naive datetime could be local time or UTC; guessing would shift it silently.
            raise UnserializableError(
                f"naive datetime at {where(path)} is ambiguous; give it a tzinfo "
                "(e.g. datetime.now(UTC))",
                path=render_path(path),
            )
        try:
            value = value.astimezone(UTC)
        except OverflowError:
            raise UnserializableError(
                f"datetime at {where(path)} is out of range once in UTC (years 1 to 9999)",
                path=render_path(path),
            ) from None
    # JavaScript's Date.toISOString() shape: a four-digit year, milliseconds and "Z". A
    # %-format is the fastest spelling by far (strftime's %Y drops the zeros of years < 1000).
    return "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ" % (  # noqa: UP031
        value.year,
        value.month,
        value.day,
        value.hour,
        value.minute,
        value.second,
        value.microsecond // 1000,
    )


def encrypt_secret(scope: Scope, secret: Secret, path: TreePath) -> dict[str, Any]:
    """The ``@secret`` payload of ``secret``, as Alchemy's ``serialize`` writes it.

    Raises:
        SecretError: ``scope`` has no password.
        UnserializableError: a non-str value has no JSON form.
    """
    if scope.password is None:
        raise SecretError(
            f"secret at {where(path)} cannot be stored without a password: give the "
            "scope one (Scope(..., password=...))"
        )
    value = secret.unencrypted
    if isinstance(value, str):
        return secrets.encrypt(str.__str__(value), scope.password)
    try:
        # Alchemy stores JSON.stringify(value); compact separators are its spelling.
        text = json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError, RecursionError) as exc:
        raise UnserializableError(
            f"secret at {where(path)} holds a value with no JSON form: {exc}",
            path=render_path(path),
        ) from None
    return {"data": secrets.encrypt(text, scope.password)}


def decrypt_secret(scope: Scope, payload: object, path: TreePath) -> Secret:
    """Turn an ``{"@secret": payload}`` marker back into its :class:`Secret`.

    Args:
        scope: The scope whose password decrypts the secret.
        payload: The marker's value.
        path: Where the marker sits, for error messages.

    Returns:
        The secret.

    Raises:
        SecretError: No password, a wrong one, or Alchemy's legacy libsodium format.
        SerdeError: The marker is malformed.
    """
    if isinstance(payload, dict) and "data" in payload:
        text = _decrypt_text(scope, payload["data"], path)
        try:
            return Secret(json.loads(text))
        except ValueError:
            raise SerdeError(f"secret at {where(path)} holds data that is not JSON text") from None
    return Secret(_decrypt_text(scope, payload, path))


def _decrypt_text(scope: Scope, payload: object, path: TreePath) -> str:
    try:
        return secrets.decrypt(payload, scope.password)
    except SerdeError:
        # Rendered only now: decrypting again fails the same way, with the path in the
        # message (SecretError is a SerdeError; the key is cached, so no second scrypt).
        return secrets.decrypt(payload, scope.password, path=render_path(path))


def parse_date(text: object, path: TreePath) -> datetime:
    """The datetime of an ``@date`` marker's text, in UTC.

    Raises:
        SerdeError: ``text`` is not an ISO-8601 date text.
    """
    if isinstance(text, str):
        try:
            parsed = datetime.fromisoformat(text)
        except ValueError:
            pass
        else:
            # Alchemy always writes UTC with "Z"; a tz-less text can only mean UTC.
            if parsed.tzinfo is None:
                return parsed.replace(tzinfo=UTC)
            return parsed if parsed.tzinfo is UTC else parsed.astimezone(UTC)
    raise SerdeError(f"malformed @date marker at {where(path)}: {text!r}")


def encode_buffer(data: bytes) -> str:
    """The ``@buffer`` text of ``data``: standard base64 with padding."""
    return binascii.b2a_base64(data, newline=False).decode("ascii")


def parse_buffer(text: object, path: TreePath) -> bytes:
    """The bytes of a ``@buffer`` marker's text.

    Raises:
        SerdeError: ``text`` is not standard base64 (strict: alphabet and padding).
    """
    if isinstance(text, str):
        try:
            # What base64.b64decode(validate=True) accepts, without its regex per call.
            return binascii.a2b_base64(text, strict_mode=True)
        except (binascii.Error, ValueError):
            pass
    raise SerdeError(f"malformed @buffer marker at {where(path)}: expected base64 text")


def from_marker(scope: Scope, tree: dict[str, Any], path: TreePath) -> Any:
    """The live value of a dict holding a marker key.

    The first present of ``@secret``, ``@date``, ``@scope``, ``@buffer`` decides; other
    keys are ignored.

    Raises:
        SerdeError, SecretError: as :func:`decrypt_secret`, :func:`parse_date`,
            :func:`parse_buffer`.
    """
    if "@secret" in tree:
        return decrypt_secret(scope, tree["@secret"], path)
    if "@date" in tree:
        return parse_date(tree["@date"], path)
    if "@scope" in tree:
        return scope
    return parse_buffer(tree["@buffer"], path)
