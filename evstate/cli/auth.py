"""``evstate auth``: principals files for ``evstate serve --auth``.

``auth hash`` prints the sha256 of a token read from stdin (never from the command line,
where other users could read it); ``auth check FILE`` validates a file and prints who may
do what. Exit status: 0 fine, 2 refused (a bad file, an empty token), one line on stderr.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from evstate.cli.store import fail, out
from evstate.errors import ConfigError, EvstateError
from evstate.principals import PERMISSIONS, hash_token
from evstate.serve.auth import load_file

__all__ = ["register"]

auth_app = typer.Typer(help="Principals of evstate serve: token hashes, file checks.")


@auth_app.command("hash")
def auth_hash() -> None:
    """Print the sha256 of a token read from stdin (one line; the newline is dropped).

    Put the hash in a principal's tokens_sha256; give the token to its holder.
    """
    raw = sys.stdin.buffer.read()
    token = raw.removesuffix(b"\n").removesuffix(b"\r")
    try:
        if not token:
            raise ConfigError('no token on stdin (e.g. `printf %s "$TOKEN" | evstate auth hash`)')
        if b"\n" in token:
            raise ConfigError("stdin holds more than one line; give one token")
    except EvstateError as exc:
        raise fail(exc) from exc
    out.print(hash_token(token))


@auth_app.command("check")
def auth_check(
    file: Annotated[Path, typer.Argument(help="The principals file (TOML).")],
) -> None:
    """Check a principals file and print who may do what (write and lock imply read)."""
    try:
        principals = load_file(file)
    except EvstateError as exc:
        raise fail(exc) from exc
    table = Table(title=f"principals in {file}")
    table.add_column("principal", overflow="fold")
    table.add_column("tokens")
    for permission in PERMISSIONS:
        table.add_column(permission, overflow="fold")
    for name, tokens, grants in principals.table():
        table.add_row(name, str(tokens), *(", ".join(grants[p]) or "-" for p in PERMISSIONS))
    out.print(table)


def register(app: typer.Typer) -> None:
    """Add ``auth`` to ``app``."""
    app.add_typer(auth_app, name="auth")
