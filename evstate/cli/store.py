"""The store commands of the ``evstate`` command line: look into the view, repair it.

``scopes``, ``ls``, ``get``, ``rm``, ``rebuild`` and ``verify`` each open an
:class:`~evstate.client.EvstateClient` on the CLI's own view dir, catch the view up with
the state topic (so they show what is in Kafka now, not what the view held when last
used), do their job and close. :func:`register` adds them to the ``evstate`` app.

Exit status: 0 done, 1 a check failed (a missing key, a view that differs from the
topic), 2 evstate refused (:class:`~evstate.errors.EvstateError`, one line on stderr).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from evstate import keys
from evstate.client import EvstateClient
from evstate.errors import EvstateError
from evstate.model import Scope
from evstate.names import printable
from evstate.serde import deserialize
from evstate.stacks import REDACTED, kind_of
from evstate.verify import VerifyReport
from evstate.view import decode_value

__all__ = [
    "MASK",
    "err",
    "error_line",
    "fail",
    "mask_secrets",
    "out",
    "register",
    "reveal_secrets",
]

MASK = "********"
"""What a secret looks like in ``evstate get`` without ``--reveal``."""

# Nothing evstate prints is rich markup: keys, scope paths and error messages hold user
# text ("a:[/]", "[bold]"), which must reach the terminal as written.
out = Console(markup=False, highlight=False)
err = Console(stderr=True, markup=False, highlight=False)

T = TypeVar("T")

BootstrapServers = Annotated[
    str | None,
    typer.Option(
        "--bootstrap-servers",
        help="Kafka bootstrap servers (default: $EVSTATE_BOOTSTRAP_SERVERS or 127.0.0.1:9092).",
        show_default=False,
    ),
]
ViewDir = Annotated[
    Path | None,
    typer.Option(
        "--view-dir",
        help="This CLI's RocksDB view; not one a running client holds "
        "(default: $EVSTATE_VIEW_DIR or ~/.local/state/evstate/view).",
        show_default=False,
    ),
]
TopicPrefix = Annotated[
    str | None,
    typer.Option(
        "--topic-prefix",
        help="Topics are PREFIX.state and PREFIX.history "
        "(default: $EVSTATE_TOPIC_PREFIX or evstate).",
        show_default=False,
    ),
]
ScopeArg = Annotated[
    str,
    typer.Argument(
        metavar="SCOPE",
        help="The scope, written app/stage or app/stage/child/...",
        show_default=False,
    ),
]
KeyArg = Annotated[str, typer.Argument(metavar="KEY", help="The state's id (may contain '/').")]


def error_line(message: str) -> None:
    """Print ``error: message`` as one line on stderr, the message as written (no markup,
    control characters escaped)."""
    one_line = " ".join(printable(line) for line in message.splitlines()) or message
    err.print(Text.assemble(("error:", "bold red"), " ", one_line), soft_wrap=True)


def fail(exc: EvstateError) -> typer.Exit:
    """Print ``exc`` as one line on stderr; return the exit (status 2) to raise."""
    error_line(str(exc))
    return typer.Exit(2)


def settings_overrides(
    bootstrap_servers: str | None,
    view_dir: Path | None,
    topic_prefix: str | None,
    password: str | None = None,
) -> dict[str, Any]:
    """Overrides for ``Settings.from_env``; ``None`` leaves the EVSTATE_* value or default."""
    return {
        "bootstrap_servers": bootstrap_servers,
        "view_dir": None if view_dir is None else str(view_dir),
        "topic_prefix": topic_prefix,
        "password": password,
    }


def run(
    overrides: dict[str, Any],
    job: Callable[[EvstateClient], Awaitable[T]],
    *,
    catch_up: bool = True,
) -> T:
    """Open a client, catch its view up with the topic, run ``job``, close.

    Raises:
        typer.Exit: status 2 when evstate refused (the message is on stderr).
    """

    # aiokafka logs transient errors (a fresh topic's leader not elected yet) that it
    # retries itself; what it cannot recover from reaches us as an EvstateError.
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)

    async def main() -> T:
        async with EvstateClient(**overrides) as client:
            if catch_up:
                await client.catch_up()
            return await job(client)

    try:
        return asyncio.run(main())
    except EvstateError as exc:
        raise fail(exc) from exc


@contextmanager
def progress_bar(label: str) -> Iterator[Callable[[int, int], None]]:
    """A transient progress bar on stderr; yields the ``progress(done, total)`` callback."""
    with Progress(
        TextColumn("{task.description}", markup=False),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err,
        transient=True,
    ) as bar:
        task = bar.add_task(label, total=None)

        def progress(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        yield progress


def parse_scope(path: str, password: str | None = None) -> Scope:
    try:
        return Scope.parse(path, password=password)
    except EvstateError as exc:
        raise fail(exc) from exc


def _missing(message: str) -> typer.Exit:
    err.print(message, highlight=False, soft_wrap=True)
    return typer.Exit(1)


# -- secrets in trees ---------------------------------------------------------------


def _walk_secrets(tree: Any, path: str, replace: Callable[[Any, str], Any]) -> Any:
    """A copy of ``tree`` with every ``{"@secret": ...}`` marker replaced by ``replace``;
    an Alchemy v2 secret (``{"__redacted__": ...}``, sealed by ``evstate serve``, which
    alone holds its key) is masked."""
    if isinstance(tree, dict):
        if "@secret" in tree:  # serde recognises markers by the key, so do we
            return replace(tree, path)
        if REDACTED in tree:
            return MASK
        return {k: _walk_secrets(v, f"{path}.{k}" if path else k, replace) for k, v in tree.items()}
    if isinstance(tree, list):
        return [_walk_secrets(v, f"{path}[{i}]", replace) for i, v in enumerate(tree)]
    return tree


def mask_secrets(tree: Any) -> Any:
    """A copy of a serialized tree with every secret marker shown as :data:`MASK`."""
    return _walk_secrets(tree, "", lambda _marker, _path: MASK)


def _plain(value: Any) -> Any:
    """A revealed secret as JSON: its plaintext (``unencrypted``, as Alchemy's Secret)."""
    value = getattr(value, "unencrypted", value)
    if value is None or isinstance(value, str | int | float | bool | list | dict):
        return value
    return str(value)


def reveal_secrets(scope: Scope, tree: Any) -> Any:
    """A copy of a serialized tree with every secret decrypted with ``scope.password``.

    Other markers (``@date``, ``@buffer``, ...) stay as they are, so the output is the
    stored tree with only the secrets opened.

    Raises:
        SecretError: no password, a wrong one, or a secret that cannot be decrypted.
    """
    return _walk_secrets(
        tree, "", lambda marker, path: _plain(deserialize(scope, marker, path=path))
    )


# -- the commands -------------------------------------------------------------------


def scopes(
    counts: Annotated[
        bool, typer.Option("--counts", help="A table with states per scope.")
    ] = False,
    bootstrap_servers: BootstrapServers = None,
    view_dir: ViewDir = None,
    topic_prefix: TopicPrefix = None,
) -> None:
    """List every scope that holds at least one state, one path per line."""

    async def job(client: EvstateClient) -> list[tuple[str, int]]:
        # Counted by record-key prefix, not through Scope: a path stored before names
        # were checked ("rt//abs") is listed like the others instead of failing them all.
        return [(path, client.view.count_prefix(f"{path}:".encode())) for path in client.scopes()]

    rows = run(settings_overrides(bootstrap_servers, view_dir, topic_prefix), job)
    if not counts:
        for path, _ in rows:
            typer.echo(printable(path))
        return
    table = Table()
    table.add_column("scope")
    table.add_column("states", justify="right")
    for path, n in rows:
        table.add_row(printable(path), str(n))
    out.print(table)


def ls(
    scope: ScopeArg,
    long: Annotated[
        bool, typer.Option("--long", "-l", help="A table with kind, status, seq, version.")
    ] = False,
    bootstrap_servers: BootstrapServers = None,
    view_dir: ViewDir = None,
    topic_prefix: TopicPrefix = None,
) -> None:
    """List the ids directly in SCOPE (not in nested scopes), one per line."""
    where = parse_scope(scope)

    async def job(client: EvstateClient) -> list[tuple[str, int | None, Any]]:
        store = client.store(where)
        if not long:
            return [(k, None, None) for k in await store.list(consistency="eventual")]
        trees = await store.all_trees(consistency="eventual")
        # Read by record key, not through store.version: a key stored before keys were
        # checked (control characters) is listed, not refused.
        prefix = keys.scope_prefix(where).encode("utf-8")
        rows: list[tuple[str, int | None, Any]] = []
        for k, t in trees.items():
            raw = client.view.get(prefix + k.encode("utf-8"))
            rows.append((k, None if raw is None else decode_value(raw)[0], t))
        return rows

    rows = run(settings_overrides(bootstrap_servers, view_dir, topic_prefix), job)
    if not long:
        for key, _, _ in rows:
            typer.echo(printable(key))  # a key stored before names were checked
        return
    table = Table()
    for column in ("id", "kind", "status", "seq", "version"):
        table.add_column(column, justify="right" if column in ("seq", "version") else "left")
    for key, version, tree in rows:
        cells = (key, kind_of(tree), tree.get("status", ""), tree.get("seq", ""), version)
        table.add_row(*(printable(str(cell)) for cell in cells))
    out.print(table)


def get(
    scope: ScopeArg,
    key: KeyArg,
    reveal: Annotated[
        bool, typer.Option("--reveal", help="Decrypt secrets (needs the password).")
    ] = False,
    password: Annotated[
        str | None,
        typer.Option(
            "--password",
            help="Password for --reveal (default: $EVSTATE_PASSWORD).",
            show_default=False,
        ),
    ] = None,
    bootstrap_servers: BootstrapServers = None,
    view_dir: ViewDir = None,
    topic_prefix: TopicPrefix = None,
) -> None:
    """Print the state of KEY in SCOPE as JSON (Alchemy's field names); secrets masked.

    Exits 1 when the key has no state.
    """
    where = parse_scope(scope)

    async def job(client: EvstateClient) -> tuple[Any, str | None]:
        tree = await client.store(where).get_tree(key, consistency="eventual")
        return tree, client.settings.password

    tree, secret_password = run(
        settings_overrides(bootstrap_servers, view_dir, topic_prefix, password), job
    )
    if tree is None:
        raise _missing(f"no state for {key!r} in scope {where.path!r}")
    try:
        shown = (
            reveal_secrets(Scope(*where.chain, password=secret_password), tree)
            if reveal
            else mask_secrets(tree)
        )
    except EvstateError as exc:
        raise fail(exc) from exc
    typer.echo(json.dumps(shown, indent=2, ensure_ascii=False))


def rm(
    scope: ScopeArg,
    key: KeyArg,
    bootstrap_servers: BootstrapServers = None,
    view_dir: ViewDir = None,
    topic_prefix: TopicPrefix = None,
) -> None:
    """Delete the state of KEY in SCOPE and print where the delete landed (partition:offset).

    The delete is an event: the history keeps the state. Exits 1 when the key has no state.
    """
    where = parse_scope(scope)

    async def job(client: EvstateClient) -> str | None:
        store = client.store(where)
        if await store.get_tree(key, consistency="eventual") is None:
            return None
        return (await store.delete(key, reason="evstate rm")).token

    token = run(settings_overrides(bootstrap_servers, view_dir, topic_prefix), job)
    if token is None:
        raise _missing(f"no state for {key!r} in scope {where.path!r}; nothing deleted")
    typer.echo(token)


def rebuild(
    bootstrap_servers: BootstrapServers = None,
    view_dir: ViewDir = None,
    topic_prefix: TopicPrefix = None,
) -> None:
    """Drop this CLI's view and replay the state topic into it, with a progress bar."""
    started = time.monotonic()
    with progress_bar("replaying the state topic") as progress:

        async def job(client: EvstateClient) -> int:
            return await client.rebuild(progress)

        read = run(
            settings_overrides(bootstrap_servers, view_dir, topic_prefix), job, catch_up=False
        )
    elapsed = time.monotonic() - started
    typer.echo(f"rebuilt the view from {read} records in {elapsed:.1f}s")


def verify(
    bootstrap_servers: BootstrapServers = None,
    view_dir: ViewDir = None,
    topic_prefix: TopicPrefix = None,
) -> None:
    """Recompute the state from the topic and compare it with the view, key by key.

    Exits 1 and lists the keys when they differ (``evstate rebuild`` repairs the view).
    """

    async def job(client: EvstateClient) -> VerifyReport:
        return await client.verify()

    report = run(settings_overrides(bootstrap_servers, view_dir, topic_prefix), job)
    for poison in report.poison:
        err.print(
            f"unreadable record at {poison.position} (skipped): {poison.reason}",
            highlight=False,
            soft_wrap=True,
        )
    diffs = report.differences
    if not diffs:
        typer.echo(f"view matches topic: {report.keys} keys")
        return
    err.print(f"{len(diffs)} key(s) differ between the view and the topic:", highlight=False)
    table = Table()
    for column in ("scope", "id", "problem"):
        table.add_column(column, overflow="fold")
    for diff in diffs:
        path, _, ident = diff.key.partition(":")
        table.add_row(path, ident, diff.problem)
    out.print(table)
    err.print("run `evstate rebuild` to rebuild the view from the topic", highlight=False)
    raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    """Add the store commands to ``app``."""
    for command in (scopes, ls, get, rm, rebuild, verify):
        app.command(command.__name__)(command)
