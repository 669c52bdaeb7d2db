"""The change-log commands of the ``evstate`` command line: ``history``, ``replay``, ``diff``,
``export``.

They read the history topic through :class:`~evstate.client.EvstateClient` (``history``,
``state_at``'s trees, ``diff``) and print serialized trees: a secret stays a marker, shown
as ``********`` in tables and as its ciphertext in JSON, so no command here needs the
password and none prints a plaintext. :func:`register` adds them to the ``evstate`` app.

A point (``--at``, ``--from``, ``--since``, ...) is read by :func:`parse_point`.

Exit status: 0 done, 1 ``diff --exit-code`` found differences, 2 evstate refused (one line
on stderr).
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any, TextIO

import typer
from rich.table import Table
from rich.text import Text

from evstate.cli.store import (
    BootstrapServers,
    ScopeArg,
    TopicPrefix,
    ViewDir,
    err,
    error_line,
    fail,
    mask_secrets,
    out,
    parse_scope,
    progress_bar,
    run,
    settings_overrides,
)
from evstate.client import EvstateClient
from evstate.errors import EvstateError, ValidationError
from evstate.history import Diff, Point
from evstate.model import ChangeEvent, Position, Scope, Tree
from evstate.names import printable

__all__ = ["event_json", "parse_point", "props_changes", "register"]

_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}
_RELATIVE = re.compile(r"-(\d+(?:\.\d+)?)([smhdw])")
_OFFSET = re.compile(r"\d+")
_POSITION = re.compile(r"\d+:\d+")
# Kafka timestamps are milliseconds since the epoch; datetime stops at year 9999.
_EARLIEST = datetime(1970, 1, 1, tzinfo=UTC)
_LATEST = datetime(9999, 1, 1, tzinfo=UTC)
_POINT_HELP = (
    "an ISO-8601 time (naive = UTC), 'now', a relative time such as -10m, -2h or -1d, "
    "an offset in the scope's history partition, or partition:offset"
)


def parse_point(text: str, *, partition: int, now: datetime | None = None) -> Point:
    """Read a point in a scope's history, as the CLI's options take it.

    Args:
        text: ``now``; ``-N`` + ``s|m|h|d|w`` (N seconds ... weeks before ``now``); an
            ISO-8601 time (naive means UTC); a plain offset (in ``partition``); or
            ``partition:offset``.
        partition: the scope's partition, for a plain offset.
        now: what ``now`` and relative times count from (default: the current time).

    Returns:
        A tz-aware UTC ``datetime``, or a :class:`~evstate.model.Position`.

    Raises:
        ValidationError: ``text`` is none of these, or a time outside 1970-01-01 ..
            9999-01-01 (UTC), which Kafka's timestamps cannot hold.
    """
    text = text.strip()
    now = (now or datetime.now(UTC)).astimezone(UTC)
    if text.lower() == "now":
        return now
    if _OFFSET.fullmatch(text):
        return Position(partition, int(text))
    if _POSITION.fullmatch(text):
        return Position.parse(text)
    try:
        if match := _RELATIVE.fullmatch(text):
            when = now - timedelta(**{_UNITS[match[2]]: float(match[1])})
        else:
            when = datetime.fromisoformat(text)
            when = when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)
    except ValueError:
        raise ValidationError(f"invalid point {text!r}: expected {_POINT_HELP}") from None
    except OverflowError:
        when = _EARLIEST - timedelta(days=1)  # out of range either way; refused below
    if not _EARLIEST <= when < _LATEST:
        raise ValidationError(
            f"point {text!r} is out of range: times go from "
            f"{_EARLIEST:%Y-%m-%d} to {_LATEST:%Y-%m-%d} (UTC)"
        )
    return when


def _check_points(*texts: str | None) -> None:
    """Refuse a malformed point before connecting to anything (exit status 2)."""
    for text in texts:
        if text is not None:
            try:
                parse_point(text, partition=0)
            except EvstateError as exc:
                raise fail(exc) from exc


def _show_point(point: Point) -> str:
    if isinstance(point, Position):
        return f"offset {point.token}"
    return _when(point)


def _when(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] + "Z"


# -- what changed -------------------------------------------------------------------


def _short(value: Any, limit: int = 40) -> str:
    shown = mask_secrets(value)
    text = (
        shown if isinstance(shown, str) else json.dumps(shown, ensure_ascii=False, sort_keys=True)
    )
    return text if len(text) <= limit else text[: limit - 1] + "…"


def props_changes(before: Tree | None, after: Tree | None) -> list[str]:
    """What changed from one serialized state to the next, for a person to read.

    Args:
        before: the earlier state tree, or ``None`` (no state: the key was created).
        after: the later state tree, or ``None`` (the key was deleted).

    Returns:
        ``["created"]``, ``["deleted"]``, or one entry per props key that differs
        (``"memory: 256 → 512"``, ``"+name"``, ``"-old"``); when the props are equal but
        the state is not, the other fields that differ (``"(status, output)"``). Secret
        values show as ``********``.
    """
    if after is None:
        return ["deleted"]
    if before is None:
        return ["created"]
    old, new = before.get("props") or {}, after.get("props") or {}
    changes: list[str] = []
    for name in sorted(old.keys() | new.keys()):
        if name not in old:
            changes.append(f"+{name}")
        elif name not in new:
            changes.append(f"-{name}")
        elif old[name] != new[name]:
            changes.append(f"{name}: {_short(old[name])} → {_short(new[name])}")
    if not changes:
        fields = sorted(f for f in before.keys() | after.keys() if before.get(f) != after.get(f))
        if fields:
            changes.append(f"({', '.join(fields)})")
    return changes


def event_json(event: ChangeEvent) -> dict[str, Any]:
    """An event as the JSON object ``export`` and ``history --json`` print (secrets encrypted)."""
    return {
        "position": None if event.position is None else event.position.token,
        "event_id": event.event_id,
        "op": event.op,
        "scope": list(event.scope),
        "key": event.key,
        "version": event.version,
        "expected_version": event.expected_version,
        "timestamp": event.timestamp.astimezone(UTC).isoformat(timespec="milliseconds"),
        "actor": event.actor,
        "reason": event.reason,
        "correlation_id": event.correlation_id,
        "state": event.state,
    }


# -- plumbing -----------------------------------------------------------------------


@contextmanager
def _output(path: Path | None) -> Iterator[TextIO]:
    """``path`` opened for writing, or stdout; an unwritable file is exit status 2."""
    if path is None:
        yield sys.stdout
        return
    try:
        handle = path.open("w", encoding="utf-8")
    except OSError as exc:
        error_line(f"cannot write {path}: {exc.strerror or exc}")
        raise typer.Exit(2) from exc
    try:
        with handle:
            yield handle
    except OSError as exc:  # /proc/version opens, then refuses the write
        error_line(f"cannot write {path}: {exc.strerror or exc}")
        raise typer.Exit(2) from exc


def _point(client: EvstateClient, scope: Scope, text: str | None, now: datetime) -> Point | None:
    if text is None:
        return None
    return parse_point(text, partition=client.partition_of(scope), now=now)


Out = Annotated[
    Path | None,
    typer.Option("--out", "-o", help="Write to FILE instead of stdout.", show_default=False),
]
Since = Annotated[
    str | None, typer.Option("--since", help=f"First point to include: {_POINT_HELP}.")
]
Until = Annotated[
    str | None, typer.Option("--until", help=f"Last point to include: {_POINT_HELP}.")
]


# -- the commands -------------------------------------------------------------------


def history(
    scope: ScopeArg,
    key: Annotated[
        str | None, typer.Argument(metavar="[KEY]", help="Only this state's events.")
    ] = None,
    since: Since = None,
    until: Until = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="JSON lines of the events instead of a table.")
    ] = False,
    bootstrap_servers: BootstrapServers = None,
    view_dir: ViewDir = None,
    topic_prefix: TopicPrefix = None,
) -> None:
    """Every change to SCOPE (or KEY in it), oldest first: when, who, op, what changed."""
    where = parse_scope(scope)
    _check_points(since, until)
    now = datetime.now(UTC)

    async def job(client: EvstateClient) -> list[ChangeEvent]:
        bounds = _point(client, where, since, now), _point(client, where, until, now)
        return [e async for e in client.history(where, key, since=bounds[0], until=bounds[1])]

    events = run(settings_overrides(bootstrap_servers, view_dir, topic_prefix), job, catch_up=False)
    if as_json:
        for event in events:
            typer.echo(json.dumps(event_json(event), ensure_ascii=False))
        return
    table = Table(title=f"history of {where.path}" + (f" {key}" if key else ""))
    for column in ("when (UTC)", "who", "op", "key", "version", "status", "reason"):
        table.add_column(column, justify="right" if column == "version" else "left")
    table.add_column("what changed", overflow="fold")
    last: dict[str, ChangeEvent] = {}
    for event in events:
        previous = last.get(event.key)
        last[event.key] = event
        if previous is None and event.op == "SET" and event.version > 1:
            changed = "(earlier events not listed)"
        else:
            before = None if previous is None else previous.state
            changed = "; ".join(props_changes(before, event.state))
        status = "" if event.state is None else str(event.state.get("status", ""))
        row = (_when(event.timestamp), event.actor, event.op, event.key, str(event.version))
        table.add_row(*(Text(printable(c)) for c in (*row, status, event.reason or "", changed)))
    out.print(table)
    err.print(f"{len(events)} event(s)", highlight=False)


def replay(
    scope: ScopeArg,
    at: Annotated[str, typer.Option("--at", help=f"The point: {_POINT_HELP}.")],
    out_file: Out = None,
    bootstrap_servers: BootstrapServers = None,
    view_dir: ViewDir = None,
    topic_prefix: TopicPrefix = None,
) -> None:
    """Print every state of SCOPE as it was at a point: a JSON object {id: state}.

    States are serialized trees (Alchemy's field names); secrets stay encrypted.
    """
    where = parse_scope(scope)
    _check_points(at)
    now = datetime.now(UTC)
    point: list[Point] = []

    with progress_bar(f"replaying {where.path}") as progress:

        async def job(client: EvstateClient) -> dict[str, Tree]:
            point.append(parse_point(at, partition=client.partition_of(where), now=now))
            return await client.trees_at(where, point[0], progress)

        trees = run(
            settings_overrides(bootstrap_servers, view_dir, topic_prefix), job, catch_up=False
        )
    with _output(out_file) as sink:
        sink.write(json.dumps(trees, indent=2, sort_keys=True, ensure_ascii=False) + "\n")
    err.print(f"{len(trees)} state(s) of {where.path} as of {_show_point(point[0])}")


def diff(
    scope: ScopeArg,
    from_: Annotated[str, typer.Option("--from", help=f"The earlier point: {_POINT_HELP}.")],
    to: Annotated[str, typer.Option("--to", help=f"The later point: {_POINT_HELP}.")],
    exit_code: Annotated[
        bool, typer.Option("--exit-code", help="Exit 1 when there are differences.")
    ] = False,
    bootstrap_servers: BootstrapServers = None,
    view_dir: ViewDir = None,
    topic_prefix: TopicPrefix = None,
) -> None:
    """List the keys of SCOPE added, removed and changed from one point to another."""
    where = parse_scope(scope)
    _check_points(from_, to)
    now = datetime.now(UTC)

    async def job(client: EvstateClient) -> Diff:
        a = parse_point(from_, partition=client.partition_of(where), now=now)
        b = parse_point(to, partition=client.partition_of(where), now=now)
        return await client.diff(where, a, b)

    found = run(settings_overrides(bootstrap_servers, view_dir, topic_prefix), job, catch_up=False)
    if not found:
        err.print(f"no differences in {where.path} from {from_} to {to}", highlight=False)
        return
    rows: list[tuple[str, str, str]] = [(k, "added", "") for k in found.added]
    rows += [(k, "removed", "") for k in found.removed]
    rows += [(k, "changed", "; ".join(props_changes(*t))) for k, t in found.changed.items()]
    table = Table(title=f"{where.path}: {from_} → {to}")
    for column in ("key", "change", "what changed"):
        table.add_column(column, overflow="fold")
    for row in sorted(rows):
        table.add_row(*(Text(printable(c)) for c in row))
    out.print(table)
    counts = f"{len(found.added)} added, {len(found.removed)} removed"
    err.print(f"{counts}, {len(found.changed)} changed", highlight=False)
    if exit_code:
        raise typer.Exit(1)


def export(
    scope: ScopeArg,
    out_file: Out = None,
    bootstrap_servers: BootstrapServers = None,
    view_dir: ViewDir = None,
    topic_prefix: TopicPrefix = None,
) -> None:
    """Print every event of SCOPE as JSON lines, oldest first, for auditors.

    Each line: position, event_id, op, scope, key, version, expected_version, timestamp,
    actor, reason, correlation_id, state (secrets as ciphertext, never plaintext).
    """
    where = parse_scope(scope)

    with _output(out_file) as sink:

        async def job(client: EvstateClient) -> int:
            count = 0
            async for event in client.history(where):
                sink.write(json.dumps(event_json(event), ensure_ascii=False) + "\n")
                count += 1
            return count

        written = run(
            settings_overrides(bootstrap_servers, view_dir, topic_prefix), job, catch_up=False
        )
    err.print(f"{written} event(s) of {where.path}", highlight=False)


def register(app: typer.Typer) -> None:
    """Add ``history``, ``replay``, ``diff`` and ``export`` to ``app``."""
    for command in (history, replay, diff, export):
        app.command(command.__name__)(command)
