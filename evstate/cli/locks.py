"""The lock commands: ``evstate lock list``, ``evstate lock break`` and ``evstate run --lock``.

``run --lock SCOPE -- CMD`` holds a lease on SCOPE while CMD runs: it renews it in the
background, hands CMD the token in ``EVSTATE_LOCK_TOKEN`` (an evstate client started by
CMD, the JavaScript one included, writes under it), and releases it when CMD ends. CMD's
exit status is passed through; when the lock is held by someone else CMD is not started
and the status is 75 (EX_TEMPFAIL: try again later).

``run --lock STACK/STAGE --state-url URL -- CMD`` does the same for an Alchemy v2 deploy:
the lease is on the stage's scope (``~v2.STACK/STAGE``), and CMD gets
``EVSTATE_STATE_URL=URL/lease/<token>``; ``evstate serve`` attaches that token to the
writes made through it (:mod:`evstate.serve.stacks`).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from datetime import UTC, datetime
from typing import Annotated, Any

import typer
from rich.table import Table

from evstate.cli.store import (
    BootstrapServers,
    ScopeArg,
    TopicPrefix,
    ViewDir,
    err,
    error_line,
    out,
    run,
    settings_overrides,
)
from evstate.client import EvstateClient
from evstate.errors import EvstateError, FencedError, LockHeldError
from evstate.model import Lease
from evstate.stacks import stage_scope

__all__ = ["EX_TEMPFAIL", "register"]

EX_TEMPFAIL = 75
"""``evstate run --lock``'s exit status when the lock is held by someone else."""

lock_app = typer.Typer(help="Leases on scopes: who holds what, and breaking one.")


def _when(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="seconds")


def _table(leases: list[Lease]) -> Table:
    table = Table(title="live leases")
    for column in ("scope", "holder", "token", "info", "since", "expires"):
        table.add_column(column, overflow="fold")
    for lease in leases:
        table.add_row(
            lease.scope,
            lease.holder,
            str(lease.token),
            json.dumps(lease.info, ensure_ascii=False) if lease.info else "",
            _when(lease.acquired_at),
            _when(lease.expires_at),
        )
    return table


@lock_app.command("list")
def lock_list(
    scope: Annotated[
        str | None,
        typer.Argument(metavar="[SCOPE]", help="Only leases on, over or under this scope."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per line.")] = False,
    bootstrap_servers: BootstrapServers = None,
    view_dir: ViewDir = None,
    topic_prefix: TopicPrefix = None,
) -> None:
    """List live leases: scope, holder, token, info, since, expires."""
    overrides = settings_overrides(bootstrap_servers, view_dir, topic_prefix)
    leases = run(overrides, lambda client: client.locks(scope), catch_up=False)
    if as_json:
        for lease in leases:
            out.print(json.dumps(lease.to_json(), ensure_ascii=False), soft_wrap=True)
        return
    if not leases:
        err.print("no live leases" + (f" on or under {scope}" if scope else ""))
        return
    out.print(_table(leases))


@lock_app.command("break")
def lock_break(
    scope: ScopeArg,
    token: Annotated[
        int, typer.Option("--token", help="The lease's token (evstate lock list shows it).")
    ],
    bootstrap_servers: BootstrapServers = None,
    view_dir: ViewDir = None,
    topic_prefix: TopicPrefix = None,
) -> None:
    """End someone's lease (a BREAK event in the history, with your actor)."""
    overrides = settings_overrides(bootstrap_servers, view_dir, topic_prefix)
    run(overrides, lambda client: client.break_lock(scope, token), catch_up=False)
    err.print(f"broke lease {token} on {scope}")


def run_locked(
    scope: str,
    ttl: float,
    wait: float,
    command: list[str],
    overrides: dict[str, Any],
    state_url: str | None = None,
) -> int:
    """Hold a lease on ``scope`` while ``command`` runs; its exit status (75: held).

    With ``state_url`` (an ``evstate serve`` base URL), ``scope`` is an Alchemy v2
    ``STACK/STAGE``: the lease is taken on its stage's scope and the command gets
    ``EVSTATE_STATE_URL`` = ``state_url/lease/<token>``, the state URL its writes go to.
    """
    if state_url is not None:
        stack, sep, stage = scope.partition("/")
        if not sep:
            error_line(f"--lock with --state-url wants STACK/STAGE (Alchemy v2), got {scope!r}")
            return 2
        try:
            scope = stage_scope(stack, stage).path
        except EvstateError as exc:
            error_line(str(exc))
            return 2

    async def main() -> int:
        info = {"command": " ".join(command)[:200], "pid": os.getpid()}
        async with EvstateClient(**overrides) as client:
            try:
                lease = await client.lock(scope, ttl=ttl, wait=wait, info=info)
            except LockHeldError as exc:
                error_line(str(exc))
                return EX_TEMPFAIL
            env = {**os.environ, "EVSTATE_LOCK_TOKEN": str(lease.token)}
            env["EVSTATE_LOCK_SCOPE"] = lease.scope
            if state_url is not None:
                env["EVSTATE_STATE_URL"] = f"{state_url.rstrip('/')}/lease/{lease.token}"
            try:
                child = await asyncio.create_subprocess_exec(*command, env=env)
            except OSError as exc:
                await lease.release()
                error_line(f"cannot run {command[0]!r}: {exc.strerror or exc}")
                return 127 if isinstance(exc, FileNotFoundError) else 126
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):  # passed on; we release after
                loop.add_signal_handler(sig, child.send_signal, sig)
            code = await child.wait()
            try:
                await lease.release()
            except FencedError as exc:
                error_line(f"{exc} (the command ran without the lease from then on)")
                return code or 1
            return code if code >= 0 else 128 - code

    try:
        return asyncio.run(main())
    except EvstateError as exc:
        error_line(str(exc))
        return 2


def register(app: typer.Typer) -> None:
    """Add ``lock`` and ``run`` to the ``evstate`` app."""
    app.add_typer(lock_app, name="lock")

    @app.command(
        "run",
        context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
    )
    def run_command(
        ctx: typer.Context,
        lock: Annotated[str, typer.Option("--lock", metavar="SCOPE", help="Scope to lock.")],
        ttl: Annotated[float, typer.Option(help="Lease seconds; renewed every ttl/3.")] = 30.0,
        wait: Annotated[float, typer.Option(help="Seconds to wait for a held lock.")] = 0.0,
        state_url: Annotated[
            str | None,
            typer.Option(
                "--state-url",
                metavar="URL",
                help="Alchemy v2: the evstate serve URL. --lock is then STACK/STAGE, and the "
                "command gets EVSTATE_STATE_URL=URL/lease/<token> for makeHttpStateStore.",
                show_default=False,
            ),
        ] = None,
        bootstrap_servers: BootstrapServers = None,
        view_dir: ViewDir = None,
        topic_prefix: TopicPrefix = None,
    ) -> None:
        """Run a command while holding a lease: evstate run --lock app/prod -- CMD ARGS...

        The token is in EVSTATE_LOCK_TOKEN for the command; with --state-url (Alchemy
        v2: evstate run --lock STACK/STAGE --state-url URL -- alchemy deploy ...) the
        command's state URL, carrying the lease, is in EVSTATE_STATE_URL. Exit status:
        the command's; 75 when the lock is held by someone else (the command was not
        started); 2 when evstate refused.
        """
        command = list(ctx.args)
        if command and command[0] == "--":
            command = command[1:]
        if not command:
            error_line("no command to run: evstate run --lock SCOPE -- CMD ARGS...")
            raise typer.Exit(2)
        overrides = settings_overrides(bootstrap_servers, view_dir, topic_prefix)
        sys.stdout.flush()
        raise typer.Exit(run_locked(lock, ttl, wait, command, overrides, state_url))
