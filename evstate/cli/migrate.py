"""``evstate migrate``: rewrite topics written with the old partition rule, in place.

evstate refuses topics an older evstate wrote (a scope placed by its full path, not its
stage) with :class:`~evstate.errors.LayoutError`; this command rewrites them
(:mod:`evstate.relayout` says how), keeps backups, and rebuilds this CLI's view.

Every process using the topics must be stopped first and stay stopped until it is done.
The command holds this CLI's view dir while it runs (so it refuses while another process
uses that dir), refuses topics with an open transaction, and asks before it deletes
anything (``--yes`` does not ask; ``--dry-run`` only says what it would do).

Exit status: 0 done (or nothing to do), 1 not confirmed, 2 evstate refused (one line on
stderr).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Annotated

import typer
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)

from evstate.cli.store import (
    BootstrapServers,
    TopicPrefix,
    ViewDir,
    err,
    error_line,
    fail,
    out,
    progress_bar,
    run,
    settings_overrides,
)
from evstate.client import EvstateClient
from evstate.config import Settings
from evstate.errors import EvstateError, ViewLockedError
from evstate.relayout import Plan, Result, Step, migrate, plan
from evstate.view import View

__all__ = ["migrate_command", "register"]


def _say(text: str) -> None:
    """One line on stdout, unwrapped (topic names are long)."""
    out.print(text, soft_wrap=True)


@contextmanager
def _bars() -> Iterator[Callable[[str, int, int], None]]:
    """Transient progress bars on stderr, one per topic read: yields ``progress(what, ...)``."""
    with Progress(
        TextColumn("{task.description}", markup=False),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err,
        transient=True,
    ) as bars:
        tasks: dict[str, TaskID] = {}

        def progress(what: str, done: int, total: int) -> None:
            if what not in tasks:
                tasks[what] = bars.add_task(what, total=total)
            bars.update(tasks[what], completed=done, total=total)

        yield progress


def _show_plan(planned: Plan) -> None:
    _say(planned.reason)
    if planned.scopes:
        _say(
            f"{planned.moving_scopes} of {planned.scopes} scopes in the state topic change "
            "partition"
        )
    for number, action in enumerate(planned.actions(), 1):
        _say(f"  {number}. {action}")


def _show_result(planned: Plan, result: Result, elapsed: float) -> None:
    for backup, copied in result.backed_up.items():
        _say(f"backed up {copied} records to {backup}")
    if planned.history is not None:
        _say(f"{planned.history.name}: {result.history_events} events, each in its stage")
    if planned.state is not None:
        _say(
            f"{planned.state.name}: {result.state_records} live records, each in its stage "
            f"({result.state_dropped} superseded records and tombstones left out)"
        )
    _say(f"migrated in {elapsed:.1f}s")
    backups = [planned.state_backup] + ([planned.history_backup] if planned.history else [])
    _say(
        f"kept the backups {' and '.join(backups)}: delete them once the migrated topics "
        "have proved themselves"
    )


def migrate_command(
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Say what would be done; change nothing.")
    ] = False,
    yes: Annotated[
        bool, typer.Option("--yes", "-y", help="Do not ask before deleting the topics.")
    ] = False,
    bootstrap_servers: BootstrapServers = None,
    view_dir: ViewDir = None,
    topic_prefix: TopicPrefix = None,
) -> None:
    """Rewrite topics an older evstate wrote (scopes placed by full path) so each scope's
    events are in its stage's partition; keep backups (PREFIX.state.pre-stage,
    PREFIX.history.pre-stage) and rebuild this CLI's view.

    Stop every process that uses the topics first, and keep them stopped until it is done.
    Safe to run again after a crash: it carries on from the backups.
    """
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    overrides = settings_overrides(bootstrap_servers, view_dir, topic_prefix)
    started = time.monotonic()
    try:
        settings = Settings.from_env(**overrides)
        # Held while migrating: a process using this view dir is using the topics.
        view = View.open(settings.view_dir)
    except ViewLockedError as exc:
        error_line(f"{exc}; stop every process using the topics before migrating")
        raise typer.Exit(2) from exc
    except EvstateError as exc:
        raise fail(exc) from exc
    try:
        with err.status("looking at the topics..."):
            planned = asyncio.run(plan(settings))
        if planned.step is Step.NOTHING:
            _say(planned.reason)
            return
        if planned.step is Step.REFUSE:
            error_line(planned.reason)
            raise typer.Exit(2)
        _show_plan(planned)
        if dry_run:
            _say("dry run: nothing changed")
            return
        if not yes and not typer.confirm(
            "Every process using these topics must be stopped. Go on?", err=True
        ):
            err.print("nothing changed")
            raise typer.Exit(1)
        with _bars() as progress:
            result = asyncio.run(migrate(settings, planned, progress))
        view.clear()  # offsets of topics that no longer exist
    except EvstateError as exc:
        raise fail(exc) from exc
    finally:
        view.close()
    _show_result(planned, result, time.monotonic() - started)
    with progress_bar("rebuilding the view") as rebuilding:

        async def job(client: EvstateClient) -> int:
            return await client.rebuild(rebuilding)

        read = run(overrides, job, catch_up=False)
    _say(
        f"rebuilt the view at {settings.view_dir} from {read} records; every other "
        "process's view reads the topics again once, at its next start"
    )


def register(app: typer.Typer) -> None:
    """Add ``migrate`` to ``app``."""
    app.command("migrate")(migrate_command)
