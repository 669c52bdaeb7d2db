"""The console's sessions: signed, expiring cookies that name a principal and are checked
against the principals in force (a removed principal or token ends them), CSRF tokens."""

from __future__ import annotations

import dataclasses

from evstate.principals import Principal, Principals, hash_token
from evstate.serve.ui.sessions import Sessions

OLD, NEW = "tok-old-0123456789", "tok-new-0123456789"


def principals(**tokens: list[str]) -> Principals:
    return Principals.of(
        Principal(name=name, tokens_sha256=frozenset(map(hash_token, ts)), read=("app/dev",))
        for name, ts in tokens.items()
    )


def test_sessions_are_signed_expire_and_carry_a_csrf_token() -> None:
    sessions = Sessions(b"k" * 32, ttl=60)
    cookie, session = sessions.issue("dev.reader@x", hash_token(OLD), now=1000)
    assert sessions.check(cookie, now=1059) == session
    assert session.principal == "dev.reader@x"  # a name with dots survives the format
    assert sessions.check(cookie, now=1060) is None  # expired
    expires, nonce, name, mark, signature = cookie.split(".")
    stretched = f"{int(expires) + 999}.{nonce}.{name}.{mark}.{signature}"
    assert sessions.check(stretched, now=1000) is None
    other, _ = sessions.issue("ops", hash_token(OLD), now=1000)
    swapped = f"{expires}.{nonce}.{other.split('.')[2]}.{mark}.{signature}"
    assert sessions.check(swapped, now=1000) is None  # another principal's name
    assert sessions.check(cookie[:-2] + "xx", now=1000) is None
    assert Sessions(b"j" * 32, ttl=60).check(cookie, now=1000) is None  # another key
    assert Sessions().check(cookie, now=1000) is None  # a restart: a new random key
    for junk in (None, "", "junk", "1.a.b.c", "x.a.b.c.d", f"{cookie}.extra"):
        assert sessions.check(junk, now=1000) is None
    assert Sessions.csrf_ok(session, session.csrf)
    assert not Sessions.csrf_ok(session, None)
    assert not Sessions.csrf_ok(session, "x")
    assert sessions.issue("ops", hash_token(OLD), now=1000)[1].csrf != session.csrf


def test_neither_the_token_nor_its_sha256_is_in_the_cookie() -> None:
    sessions = Sessions()
    cookie, session = sessions.issue("dev", hash_token(OLD))
    assert OLD not in cookie
    assert hash_token(OLD) not in cookie
    assert hash_token(OLD) not in repr(session)
    assert session.csrf not in repr(session)


def test_a_session_holds_while_its_principal_keeps_the_token() -> None:
    sessions = Sessions()
    _, session = sessions.issue("dev", hash_token(OLD))
    rotating = principals(dev=[OLD, NEW])
    found = sessions.resolve(session, rotating)
    assert found is not None
    assert found.name == "dev"
    # The grants are the ones in force now, not those at sign-in.
    wider = Principals.of([dataclasses.replace(found, read=("app",))])
    assert sessions.resolve(session, wider) == wider.named("dev")
    # The old token rotated out: the session signed in with it ends.
    assert sessions.resolve(session, principals(dev=[NEW])) is None
    # The principal removed.
    assert sessions.resolve(session, principals(ops=[OLD])) is None
    # Another principal now holds that token: still not this session's principal.
    assert sessions.resolve(session, principals(dev=[NEW], ops=[OLD])) is None


def test_a_mark_from_another_key_does_not_resolve() -> None:
    _, session = Sessions(b"a" * 32).issue("dev", hash_token(OLD))
    assert Sessions(b"b" * 32).resolve(session, principals(dev=[OLD])) is None
