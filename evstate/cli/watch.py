"""``evstate watch``: print every change as it happens, one line per change.

It runs an :class:`~evstate.watch.Watcher` (its own Kafka consumer; no view, so any
number of ``evstate watch`` may run beside each other and beside other commands) and
prints each event as a readable line or, with ``--json``, one JSON object per line.
Secrets show as ``********``, never as plaintext or ciphertext. Every line is flushed, so
``evstate watch --json | jq`` and other pipes see a change when it happens.

Ctrl-C (or SIGTERM) stops it with exit status 0; with ``--group``, the progress handled so
far is committed first. Exit status 2: evstate refused (one line on stderr).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
from datetime import UTC
from typing import Annotated, Any

import typer

from evstate import keys
from evstate.cli.history import event_json, parse_point, props_changes
from evstate.cli.store import (
    BootstrapServers,
    TopicPrefix,
    err,
    fail,
    mask_secrets,
    parse_scope,
    settings_overrides,
)
from evstate.client import EvstateClient
from evstate.errors import EvstateError, ValidationError
from evstate.model import ChangeEvent, Scope, Tree
from evstate.names import printable
from evstate.watch import Start

__all__ = ["change_line", "register", "watch_json"]

_FROM_HELP = (
    "Where to begin when the group has no progress yet: 'latest' (only new changes), "
    "'earliest' (everything kept), an ISO-8601 time (naive = UTC), a relative time such as "
    "-10m, or partition:offset of the history topic (a plain offset with an exact SCOPE)."
)


def watch_json(event: ChangeEvent) -> dict[str, Any]:
    """An event as ``evstate watch --json`` prints it: ``event_json`` with secrets masked."""
    return {**event_json(event), "state": mask_secrets(event.state)}


def change_line(event: ChangeEvent, before: Tree | None) -> str:
    """One readable line for a change: when, op, scope, key, version, who, status, what.

    Args:
        event: the change.
        before: the key's state as last printed, or None if not seen yet.
    """
    when = event.timestamp.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] + "Z"
    status = "" if event.state is None else str(event.state.get("status", ""))
    if event.op == "DELETE":
        what = "deleted"
    elif before is None and event.version > 1:
        what = ""  # an update of a key this watch has not seen before: no diff to show
    else:
        what = "; ".join(props_changes(before, event.state))
    if what == status:  # "created  created"
        what = ""
    parts = [
        when,
        f"{event.op:<6}",
        "/".join(event.scope),
        event.key,
        f"v{event.version}",
        event.actor,
        status,
        what,
    ]
    if event.reason:
        parts.append(f"({event.reason})")
    return "  ".join(p for p in parts if p)


def _start(text: str, scope: Scope | None, exact: bool, partitions: int) -> Start:
    word = text.strip().lower()
    if word in ("earliest", "latest"):
        return "earliest" if word == "earliest" else "latest"
    if scope is None or not exact:
        if text.strip().isdecimal():
            raise ValidationError(
                f"--from {text}: a plain offset needs an exact scope (--exact SCOPE); "
                "give partition:offset instead"
            )
        return parse_point(text, partition=0)
    return parse_point(text, partition=keys.partition_for(scope, partitions))


def watch(
    scope: Annotated[
        str | None,
        typer.Argument(
            metavar="SCOPE",
            help="Watch this scope and every scope nested in it (default: every scope).",
            show_default=False,
        ),
    ] = None,
    group: Annotated[
        str | None,
        typer.Option(
            "--group",
            "-g",
            help="A consumer group: progress is kept in Kafka, a restart resumes there, and "
            "watchers of one group share the work.",
            show_default=False,
        ),
    ] = None,
    from_: Annotated[str, typer.Option("--from", help=_FROM_HELP)] = "latest",
    exact: Annotated[
        bool, typer.Option("--exact", help="Only SCOPE itself, not the scopes nested in it.")
    ] = False,
    as_json: Annotated[
        bool, typer.Option("--json", help="One JSON object per change instead of a line.")
    ] = False,
    bootstrap_servers: BootstrapServers = None,
    topic_prefix: TopicPrefix = None,
) -> None:
    """Print every change as it happens, until Ctrl-C; secrets masked."""
    where = parse_scope(scope) if scope is not None else None
    if exact and where is None:
        raise fail(ValidationError("--exact needs a SCOPE"))
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(levelname)s: %(message)s"))
    logging.getLogger("evstate").addHandler(handler)
    logging.getLogger("evstate").setLevel(logging.INFO)

    try:
        client = EvstateClient(**settings_overrides(bootstrap_servers, None, topic_prefix))
        start = _start(from_, where, exact, client.settings.partitions)
        target: Scope | str | None = where if exact else (where.path if where else None)
        watcher = client.watch(target, group=group, start=start)
    except EvstateError as exc:
        raise fail(exc) from exc

    async def main() -> None:
        task = asyncio.current_task()
        assert task is not None
        loop = asyncio.get_running_loop()
        # Also SIGINT: a shell starts background jobs with SIGINT ignored, which would
        # leave asyncio's own Ctrl-C handling switched off.
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, task.cancel)
        seen: dict[tuple[tuple[str, ...], str], Tree | None] = {}
        async with watcher:
            what = (f"scope {scope}" + ("" if exact else " and nested")) if scope else "all scopes"
            how = f"group {group}" if group else "no group"
            err.print(
                f"watching {watcher.topic} ({what}; {how}; from {from_}); Ctrl-C stops",
                highlight=False,
                soft_wrap=True,
            )
            async for event in watcher:
                if as_json:
                    typer.echo(json.dumps(watch_json(event), ensure_ascii=False))
                else:
                    where_key = (event.scope, event.key)
                    typer.echo(printable(change_line(event, seen.get(where_key))))
                    seen[where_key] = event.state

    try:
        asyncio.run(main())
    except (KeyboardInterrupt, asyncio.CancelledError):
        with contextlib.suppress(OSError):
            err.print("stopped", highlight=False)
        raise typer.Exit(0) from None
    except EvstateError as exc:
        raise fail(exc) from exc


def register(app: typer.Typer) -> None:
    """Add ``watch`` to ``app``."""
    app.command("watch")(watch)
