"""``evstate import-alchemy`` and ``evstate export-alchemy``: Alchemy state folders ↔ evstate.

Thin commands over :mod:`evstate.alchemy.migrate`; :func:`register` adds them to the
``evstate`` app. Exit status: 0 done, 2 evstate refused (one line on stderr).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, TypeVar

import typer

from evstate.alchemy.migrate import ImportResult, export_alchemy, import_alchemy
from evstate.cli.store import BootstrapServers, ScopeArg, TopicPrefix, ViewDir, err, out, run
from evstate.client import EvstateClient

__all__ = ["export_command", "import_command", "register"]

T = TypeVar("T")

Password = Annotated[
    str | None,
    typer.Option(
        "--password",
        help="Check that every secret opens with this password before writing "
        "(default: $EVSTATE_PASSWORD; without one, secrets are not checked).",
        show_default=False,
    ),
]


def import_command(
    directory: Annotated[
        Path,
        typer.Argument(
            metavar="DIR",
            help="Alchemy's state folder (.alchemy), or the project folder holding it.",
            show_default=False,
        ),
    ],
    password: Password = None,
    bootstrap_servers: BootstrapServers = None,
    view_dir: ViewDir = None,
    topic_prefix: TopicPrefix = None,
) -> None:
    """Import Alchemy's file state (DIR/<app>/<stage>/.../<id>.json) as SET events.

    States already stored unchanged are not written again; secrets stay encrypted as
    Alchemy wrote them.
    """
    overrides = {
        "bootstrap_servers": bootstrap_servers,
        "view_dir": None if view_dir is None else str(view_dir),
        "topic_prefix": topic_prefix,
        "password": password,
    }

    async def job(client: EvstateClient) -> ImportResult:
        return await import_alchemy(client, directory, password=client.settings.password)

    result = run(overrides, job)
    for record_key in result.written:
        out.print(f"written    {record_key}", highlight=False)
    for record_key in result.unchanged:
        out.print(f"unchanged  {record_key}", highlight=False)
    err.print(
        f"{len(result.written)} state(s) written, {len(result.unchanged)} unchanged",
        highlight=False,
    )


def export_command(
    scope: ScopeArg,
    directory: Annotated[
        Path,
        typer.Argument(
            metavar="DIR",
            help="Where to write Alchemy's layout (.alchemy, or a project folder with one).",
            show_default=False,
        ),
    ],
    bootstrap_servers: BootstrapServers = None,
    view_dir: ViewDir = None,
    topic_prefix: TopicPrefix = None,
) -> None:
    """Export SCOPE and its nested scopes as Alchemy's file state under DIR."""
    overrides = {
        "bootstrap_servers": bootstrap_servers,
        "view_dir": None if view_dir is None else str(view_dir),
        "topic_prefix": topic_prefix,
    }

    async def job(client: EvstateClient) -> list[Path]:
        return await export_alchemy(client, scope, directory)

    files = run(overrides, job)
    for path in files:
        out.print(str(path), highlight=False)
    err.print(f"{len(files)} state(s) written to {directory}", highlight=False)


def register(app: typer.Typer) -> None:
    """Add ``import-alchemy`` and ``export-alchemy`` to ``app``."""
    app.command("import-alchemy")(import_command)
    app.command("export-alchemy")(export_command)
