"""``evstate access-log``: read ``evstate serve``'s access log (the ``{prefix}.access`` topic).

Prints a table (or ``--json``, one record per line) of the requests: when, principal,
method, scope, key, status, duration, client address. Filters: ``--principal``,
``--scope`` (that scope and those nested in it), ``--since`` (a time, or ``-1h``...).
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import asdict
from datetime import UTC, datetime
from typing import Annotated

import typer
from rich.table import Table

from evstate.access import AccessRecord, read_access
from evstate.cli.history import parse_point
from evstate.cli.store import BootstrapServers, TopicPrefix, fail, out, parse_scope
from evstate.config import Settings
from evstate.errors import EvstateError, ValidationError
from evstate.names import printable

__all__ = ["register"]


def _since(text: str | None) -> datetime | None:
    if text is None:
        return None
    point = parse_point(text, partition=0)
    if not isinstance(point, datetime):
        raise ValidationError(f"--since wants a time (ISO-8601, or -30m, -2h, -1d), got {text!r}")
    return point


def access_log(
    principal: Annotated[
        str | None, typer.Option("--principal", help="Only this principal's requests.")
    ] = None,
    scope: Annotated[
        str | None,
        typer.Option("--scope", help="Only requests on this scope or nested in it (app/dev)."),
    ] = None,
    since: Annotated[
        str | None,
        typer.Option("--since", help="From this time on: ISO-8601 (UTC if naive), or -30m, -2h."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per line.")] = False,
    bootstrap_servers: BootstrapServers = None,
    topic_prefix: TopicPrefix = None,
) -> None:
    """Read evstate serve's access log: who called which method on which scope, and how
    it was answered. Reads are in it as well as writes."""
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)

    async def main() -> list[AccessRecord]:
        settings = Settings.from_env(bootstrap_servers=bootstrap_servers, topic_prefix=topic_prefix)
        path = None if scope is None else parse_scope(scope).path
        found = read_access(settings, since=_since(since), principal=principal, scope=path)
        return sorted([r async for r in found], key=lambda r: r.time)

    try:
        entries = asyncio.run(main())
    except EvstateError as exc:
        raise fail(exc) from exc
    if as_json:
        for entry in entries:
            out.print(json.dumps(asdict(entry), ensure_ascii=True), soft_wrap=True)
        return
    table = Table(title=f"{len(entries)} requests")
    for column in ("time", "principal", "method", "scope", "key", "status", "ms", "from"):
        table.add_column(column, overflow="fold")
    for e in entries:
        table.add_row(
            e.when.astimezone(UTC).isoformat(timespec="milliseconds"),
            e.principal or "(unknown token)",
            e.method,
            printable(e.scope or ""),
            printable(e.key or ""),
            str(e.status),
            f"{e.duration_ms:.1f}",
            e.remote or "",
        )
    out.print(table)


def register(app: typer.Typer) -> None:
    """Add ``access-log`` to ``app``."""
    app.command("access-log")(access_log)
