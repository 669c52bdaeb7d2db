"""The ``evstate`` command line.

Every command maps :class:`~evstate.errors.EvstateError` to a one-line message on stderr and
exit status 2, so scripts can tell "evstate refused" (2) from "a check failed" (1).

The store commands (``scopes``, ``ls``, ``get``, ``rm``, ``rebuild``, ``verify``) live in
:mod:`evstate.cli.store`, registered on the same app.
"""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table
from rich.text import Text

from evstate.broker import DEFAULT_PORT, KAFKA_VERSION, LocalBroker
from evstate.cli import access as cli_access
from evstate.cli import alchemy as cli_alchemy
from evstate.cli import auth as cli_auth
from evstate.cli import history as cli_history
from evstate.cli import locks as cli_locks
from evstate.cli import migrate as cli_migrate
from evstate.cli import serve as cli_serve
from evstate.cli import store as cli_store
from evstate.cli import watch as cli_watch
from evstate.cli.store import err, fail, out
from evstate.config import default_broker_dir
from evstate.errors import ConfigError, EvstateError

app = typer.Typer(
    help="evstate: an event-sourced state store on Apache Kafka with a RocksDB view.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
broker_app = typer.Typer(
    help="Run a real Apache Kafka broker on this machine.", no_args_is_help=True
)
app.add_typer(broker_app, name="broker")
cli_store.register(app)
cli_access.register(app)
cli_alchemy.register(app)
cli_auth.register(app)
cli_history.register(app)
cli_locks.register(app)
cli_migrate.register(app)
cli_serve.register(app)
cli_watch.register(app)


def _default_broker_dir() -> Path:
    return Path(default_broker_dir())


DataDir = Annotated[
    Path | None,
    typer.Option(
        "--data-dir",
        help="Folder holding the broker's configs, logs and data "
        "(default: $EVSTATE_BROKER_DIR or ~/.local/state/evstate/broker).",
    ),
]


def _sasl_user(value: str) -> tuple[str, str]:
    name, sep, password = value.partition("=")
    if not sep:
        raise ConfigError(f"--sasl-user wants NAME=PASSWORD, got {name!r}")
    return name, password


@broker_app.command("start")
def broker_start(
    port: Annotated[int, typer.Option(help="First client port.")] = DEFAULT_PORT,
    data_dir: DataDir = None,
    nodes: Annotated[
        int,
        typer.Option(
            help="1, or 3 for a replicated cluster (RF 3, min.insync.replicas 2). Node 1 is "
            "the only controller; nodes 2 and 3 are brokers only, so either may be stopped.",
        ),
    ] = 1,
    detach: Annotated[bool, typer.Option(help="Return once the broker answers.")] = False,
    kafka_version: Annotated[str, typer.Option(help="Apache Kafka version.")] = KAFKA_VERSION,
    heap: Annotated[str, typer.Option(help="JVM heap per node.")] = "512m",
    timeout: Annotated[float, typer.Option(help="Seconds to wait for the broker.")] = 120.0,
    sasl_user: Annotated[
        list[str] | None,
        typer.Option(
            metavar="NAME=PASSWORD",
            help="A SCRAM user (repeatable): adds a SASL_PLAINTEXT listener on port + 2 x "
            "nodes. Users are created when the data dir is first formatted.",
        ),
    ] = None,
    acl: Annotated[
        bool,
        typer.Option(
            "--acl",
            help="Kafka's authorizer on, ACLs set by evstate: only the --acl-writer user "
            "may write (give it to evstate serve), other SASL users may only read, anonymous "
            "clients nothing. Stays on for this data dir. One node.",
        ),
    ] = False,
    acl_writer: Annotated[
        str, typer.Option("--acl-writer", help="The one SASL user that may write under --acl.")
    ] = "serve",
) -> None:
    """Start a real Apache Kafka (KRaft) on loopback and print its bootstrap address."""
    try:
        users = dict(_sasl_user(v) for v in sasl_user or [])
        broker = LocalBroker(
            data_dir or _default_broker_dir(),
            port=port,
            nodes=nodes,
            version=kafka_version,
            heap=heap,
            sasl_users=users,
            acl_writer=acl_writer if acl else None,
        )
        with err.status(f"starting Apache Kafka {kafka_version} ({nodes} node(s))..."):
            bootstrap = broker.start(timeout=timeout)
    except EvstateError as exc:
        raise fail(exc) from exc
    out.print(bootstrap, highlight=False)
    if broker.sasl_bootstrap_servers:
        err.print(f"SASL_PLAINTEXT (SCRAM-SHA-256/512): {broker.sasl_bootstrap_servers}")
    err.print(f"data dir: {broker.data_dir} (server.properties and server.log per node)")
    if detach:
        return

    def _stop(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _stop)
    try:
        code = broker.wait_process()
        err.print(f"a broker node exited with status {code}; stopping the rest")
    except KeyboardInterrupt:
        err.print("stopping...")
    finally:
        broker.stop()
    raise typer.Exit(0)


@broker_app.command("stop")
def broker_stop(data_dir: DataDir = None) -> None:
    """Stop the broker started from the data dir (by its recorded pids)."""
    broker = LocalBroker(data_dir or _default_broker_dir())
    try:
        running = [s for s in broker.status() if s.running]
        broker.stop()
    except EvstateError as exc:
        raise fail(exc) from exc
    if running:
        err.print(f"stopped {len(running)} node(s) of {broker.data_dir}")
    else:
        err.print(f"nothing was running from {broker.data_dir}")


@broker_app.command("status")
def broker_status(data_dir: DataDir = None) -> None:
    """Say what runs where; exit 1 when nothing runs."""
    broker = LocalBroker(data_dir or _default_broker_dir())
    try:
        nodes = broker.status()
    except EvstateError as exc:
        raise fail(exc) from exc
    if not nodes:
        err.print(f"no broker was ever started from {broker.data_dir}")
        raise typer.Exit(1)
    table = Table(title=f"evstate broker — {broker.data_dir}")
    for column in ("node", "address", "pid", "state"):
        table.add_column(column)
    for node in nodes:
        table.add_row(
            str(node.node_id),
            f"127.0.0.1:{node.port}",
            str(node.pid or "-"),
            Text("running", "green") if node.running else Text("stopped", "red"),
        )
    out.print(table)
    if not any(n.running for n in nodes):
        raise typer.Exit(1)


def main() -> None:
    """Entry point of the ``evstate`` script."""
    app(prog_name="evstate")
