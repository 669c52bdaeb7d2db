"""Principals: who may call ``evstate serve``, and on which scopes. Pure, no I/O.

A principals file (TOML, read by :mod:`evstate.serve.auth`) lists each principal with the
sha256 of its tokens and its grants::

    [[principal]]
    name = "ci-dev"                  # the actor of everything it writes
    tokens_sha256 = ["<hex>"]        # several, so tokens rotate without downtime
    read  = ["app"]                  # scope prefixes: the scope and all nested in it
    write = ["app/dev"]              # write implies read
    lock  = ["app/dev"]              # take, renew and release leases (implies read)
    admin = []                       # break leases (implies nothing else)

A grant is a scope path (``app/dev``) or ``"*"`` (every scope). It covers a scope when its
``/``-separated segments are the first segments of the scope's path, compared exactly, so
``app/dev`` covers ``app/dev`` and ``app/dev/db`` but not ``app/devx``, and no look-alike
(``\u0430pp`` with a Cyrillic a, a fullwidth ``\uff41pp``) is ever the same name: it is another
scope, which the store keeps apart too. Grants follow the one rule for names
(:mod:`evstate.names`), so no grant holds ``..``, an empty segment or a control character.

:func:`decide` is the grant check, a pure function of (principal, permission, scope path),
called for every request.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import tomllib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Literal

from evstate.errors import ConfigError, ForbiddenError
from evstate.names import name_problem, printable

__all__ = [
    "ALL",
    "PERMISSIONS",
    "Permission",
    "Principal",
    "Principals",
    "decide",
    "hash_token",
    "may",
    "parse_principals",
]

Permission = Literal["read", "write", "lock", "admin"]
PERMISSIONS: Final[tuple[Permission, ...]] = ("read", "write", "lock", "admin")
ALL: Final = "*"
"""The grant that covers every scope."""

DEFAULT_NAME: Final = "default"
"""The principal of the single bearer token (``EVSTATE_TOKEN``): every permission."""

_HEX64 = re.compile(r"[0-9a-f]{64}")
_EMPTY_SHA256: Final = hashlib.sha256(b"").hexdigest()
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@+-]{0,127}")
_KEYS: Final = frozenset({"name", "tokens_sha256", *PERMISSIONS})


def hash_token(token: str | bytes) -> str:
    """The hex sha256 of a token, as a principals file lists it.

    Args:
        token: the token; a str is encoded as UTF-8 (with surrogateescape, as aiohttp
            decodes header bytes).
    """
    data = token if isinstance(token, bytes) else token.encode("utf-8", "surrogateescape")
    return hashlib.sha256(data).hexdigest()


@dataclass(frozen=True, slots=True, kw_only=True)
class Principal:
    """One caller of ``evstate serve``: its name, its tokens' hashes, its grants.

    Attributes:
        name: recorded as the actor of its writes; letters, digits and ``._@+-``.
        tokens_sha256: hex sha256 of each token that authenticates it.
        read, write, lock, admin: scope prefixes (``"*"``: all) per permission.
    """

    name: str
    tokens_sha256: frozenset[str] = field(default_factory=frozenset, repr=False)
    read: tuple[str, ...] = ()
    write: tuple[str, ...] = ()
    lock: tuple[str, ...] = ()
    admin: tuple[str, ...] = ()

    def grants(self, permission: Permission) -> tuple[str, ...]:
        """The prefixes that give ``permission`` (write and lock imply read)."""
        if permission == "read":
            return self.read + self.write + self.lock
        granted: tuple[str, ...] = getattr(self, permission)
        return granted


def _segments(path: str) -> tuple[str, ...]:
    return tuple(path.split("/"))


def covers(grant: str, path: str) -> bool:
    """Whether ``grant`` covers the scope at ``path`` (itself or nested in it)."""
    if grant == ALL:
        return True
    want = _segments(grant)
    have = _segments(path)
    return have[: len(want)] == want


def decide(principal: Principal, permission: Permission, path: str) -> None:
    """Allow, or refuse, ``permission`` on the scope at ``path`` for ``principal``.

    Args:
        principal: who asks.
        permission: what for.
        path: the scope's path, its chain joined with ``/`` after every name was checked
            (:class:`~evstate.model.Scope` refuses ``..``, empty and control names).

    Raises:
        ForbiddenError: no grant of ``permission`` covers ``path``.
    """
    if not may(principal, permission, path):
        raise ForbiddenError(principal.name, permission, path)


def may(principal: Principal, permission: Permission, path: str) -> bool:
    """Whether :func:`decide` allows ``permission`` on ``path`` (for what a page offers,
    such as the console's break form; a request is still checked with :func:`decide`)."""
    return any(covers(g, path) for g in principal.grants(permission))


def may_see(principal: Principal, path: str) -> bool:
    """Whether ``path`` may be named to ``principal`` in a listing of scopes: it may read
    it, or it holds a grant nested in it (the way down to what it may read)."""
    grants = principal.grants("read")
    if any(covers(g, path) for g in grants):
        return True
    return any(g != ALL and covers(path, g) for g in grants)


@dataclass(frozen=True, slots=True)
class Principals:
    """Every principal, found by the hash of a token."""

    principals: tuple[Principal, ...]
    _by_hash: Mapping[str, Principal] = field(default_factory=dict, repr=False, compare=False)
    _by_name: Mapping[str, Principal] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def of(cls, principals: Iterable[Principal]) -> Principals:
        """Index ``principals`` by their tokens' hashes.

        Raises:
            ConfigError: two principals share a name or a token.
        """
        listed = tuple(principals)
        by_hash: dict[str, Principal] = {}
        names: set[str] = set()
        for p in listed:
            if p.name in names:
                raise ConfigError(f"principal {p.name!r} is listed twice")
            names.add(p.name)
            for digest in p.tokens_sha256:
                if digest in by_hash:
                    raise ConfigError(
                        f"principals {by_hash[digest].name!r} and {p.name!r} share a token "
                        f"(sha256 {digest[:12]}...); a token must name one principal"
                    )
                by_hash[digest] = p
        return cls(listed, by_hash, {p.name: p for p in listed})

    @classmethod
    def single(cls, token: str) -> Principals:
        """The principal ``default``, with every permission, for one bearer token."""
        everything = (ALL,)
        return cls.of(
            [
                Principal(
                    name=DEFAULT_NAME,
                    tokens_sha256=frozenset({hash_token(token)}),
                    read=everything,
                    write=everything,
                    lock=everything,
                    admin=everything,
                )
            ]
        )

    def authenticate(self, token: str | bytes) -> Principal | None:
        """The principal ``token`` belongs to, or None.

        The token is hashed, then looked up by its digest: what is compared is a sha256,
        which a caller cannot steer byte by byte, and ``compare_digest`` confirms it.
        """
        digest = hash_token(token)
        found = self._by_hash.get(digest)
        if found is None:
            return None
        for known in found.tokens_sha256:
            if hmac.compare_digest(known, digest):
                return found
        return None  # pragma: no cover - the index holds only its own principals' hashes

    def named(self, name: str) -> Principal | None:
        """The principal called ``name`` now, or None (the console re-checks a session
        against the principals in force on every request)."""
        return self._by_name.get(name)

    def table(self) -> list[tuple[str, int, dict[Permission, tuple[str, ...]]]]:
        """``(name, token count, {permission: prefixes})`` per principal, for a listing."""
        return [
            (p.name, len(p.tokens_sha256), {perm: p.grants(perm) for perm in PERMISSIONS})
            for p in self.principals
        ]


def _grants(where: str, value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{where} must be a list of scope prefixes (strings)")
    for grant in value:
        if grant == ALL:
            continue
        problem = name_problem(grant)
        if problem is not None:
            raise ConfigError(f"{where}: scope prefix {printable(grant)!r} {problem}")
    return tuple(dict.fromkeys(value))


def _principal(index: int, entry: Any) -> Principal:
    where = f"principal #{index + 1}"
    if not isinstance(entry, dict):
        raise ConfigError(f"{where} must be a table ([[principal]])")
    name = entry.get("name")
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ConfigError(
            f"{where}: name must be 1-128 letters, digits or ._@+- (starting with a letter "
            f"or digit), got {printable(str(name))!r}"
        )
    where = f"principal {name!r}"
    unknown = sorted(set(entry) - _KEYS)
    if unknown:
        raise ConfigError(
            f"{where}: unknown key {printable(unknown[0])!r}; expected {', '.join(sorted(_KEYS))}"
        )
    tokens = entry.get("tokens_sha256", [])
    if not isinstance(tokens, list) or not tokens:
        raise ConfigError(
            f"{where}: tokens_sha256 must list at least one sha256 (evstate auth hash)"
        )
    for digest in tokens:
        if not isinstance(digest, str) or not _HEX64.fullmatch(digest):
            # Never echo it: a careless admin may have pasted the token itself.
            raise ConfigError(
                f"{where}: every entry of tokens_sha256 must be 64 lowercase hex digits "
                "(`evstate auth hash` prints one); the plaintext token never goes in the file"
            )
        if digest == _EMPTY_SHA256:
            raise ConfigError(f"{where}: tokens_sha256 lists the sha256 of an empty token")
    grants = {perm: _grants(f"{where}: {perm}", entry.get(perm, [])) for perm in PERMISSIONS}
    return Principal(
        name=name,
        tokens_sha256=frozenset(tokens),
        read=grants["read"],
        write=grants["write"],
        lock=grants["lock"],
        admin=grants["admin"],
    )


def parse_principals(text: str | bytes, source: str = "the principals file") -> Principals:
    """Read a principals file's TOML text.

    Args:
        text: the file's contents.
        source: how to name the file in errors.

    Returns:
        The principals.

    Raises:
        ConfigError: not TOML, no ``[[principal]]``, a bad name, hash or grant, a name or
            a token listed twice. The message never holds a token.
    """
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ConfigError(f"{source} is not UTF-8 ({exc.reason} at byte {exc.start})") from None
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        # The message names a line and column only, never the offending text.
        raise ConfigError(f"{source} is not valid TOML: {exc}") from None
    extra = sorted(set(doc) - {"principal"})
    if extra:
        raise ConfigError(
            f"{source}: unknown table {printable(extra[0])!r}; expected [[principal]]"
        )
    entries: Sequence[Any] = doc.get("principal", [])
    if not isinstance(entries, list) or not entries:
        raise ConfigError(f"{source} lists no [[principal]]")
    try:
        return Principals.of(_principal(i, e) for i, e in enumerate(entries))
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None
