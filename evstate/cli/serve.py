"""``evstate serve``: run the HTTP front end of the store (:mod:`evstate.serve`).

Prints ``listening on http://HOST:PORT`` on stdout once bound, logs to stderr, and runs
until SIGINT/SIGTERM. Exit status: 0 stopped, 2 evstate refused (no token, view locked,
bad settings; one line on stderr). :func:`register` adds the command to the ``evstate`` app.
"""

from __future__ import annotations

import asyncio
import logging
import math
from typing import Annotated

import typer

from evstate.cli.store import (
    BootstrapServers,
    TopicPrefix,
    ViewDir,
    err,
    error_line,
    fail,
    out,
    settings_overrides,
)
from evstate.config import Settings
from evstate.errors import ConfigError, EvstateError
from evstate.secrets import new_secret_key
from evstate.serve import (
    DEFAULT_HOST,
    DEFAULT_MAX_BODY,
    DEFAULT_PORT,
    HEADER_TIMEOUT,
    check_exposure,
    create_app,
    load_secret_keys,
    run_server,
    tls_context,
)

__all__ = ["register"]

_MIB = 1024 * 1024
# A body is read into memory whole; more than this is a typo, not a setting.
_MAX_BODY_MIB = 1024


def serve(
    host: Annotated[str, typer.Option(help="Address to listen on.")] = DEFAULT_HOST,
    port: Annotated[int, typer.Option(help="Port to listen on (0: any free port).")] = DEFAULT_PORT,
    token: Annotated[
        str | None,
        typer.Option(
            "--token",
            help="Bearer token clients must send (default: $EVSTATE_TOKEN). Prefer the "
            "variable: a command line is visible to other users.",
            show_default=False,
        ),
    ] = None,
    metrics_token: Annotated[
        str | None,
        typer.Option(
            "--metrics-token",
            help="Bearer token GET /metrics requires (default: $EVSTATE_METRICS_TOKEN; "
            "none: the metrics need no token).",
            show_default=False,
        ),
    ] = None,
    auth_file: Annotated[
        str | None,
        typer.Option(
            "--auth",
            help="Principals file (TOML; default: $EVSTATE_AUTH_FILE): each principal's token "
            "hashes and the scopes it may read, write, lock and administer. Re-read on SIGHUP "
            "and when it changes. Without it, the one token opens every scope.",
            show_default=False,
        ),
    ] = None,
    access_log: Annotated[
        bool | None,
        typer.Option(
            "--access-log/--no-access-log",
            help="Record every request in the topic {prefix}.access (read it with evstate "
            "access-log). Default: on with --auth, off without.",
            show_default=False,
        ),
    ] = None,
    tls_cert: Annotated[
        str | None,
        typer.Option(
            "--tls-cert",
            help="Serve HTTPS with this PEM certificate (chain); needs --tls-key.",
            show_default=False,
        ),
    ] = None,
    tls_key: Annotated[
        str | None,
        typer.Option("--tls-key", help="The PEM private key of --tls-cert.", show_default=False),
    ] = None,
    alchemy_v2: Annotated[
        bool | None,
        typer.Option(
            "--alchemy-v2/--no-alchemy-v2",
            help="Answer Alchemy v2's REST state routes (/version, /state/stacks/...) beside "
            "v1's POST /. Default: on when secret keys are set.",
            show_default=False,
        ),
    ] = None,
    secret_key_file: Annotated[
        str | None,
        typer.Option(
            "--secret-key-file",
            help="File of keys that seal Alchemy v2 secrets at rest: <key id>:<base64 of 32 "
            "bytes> a line, the sealing key first (default: $EVSTATE_SECRET_KEY_FILE, or the "
            "keys in $EVSTATE_SECRET_KEYS). Make one with evstate secret-key.",
            show_default=False,
        ),
    ] = None,
    plaintext_secrets: Annotated[
        bool,
        typer.Option(
            "--plaintext-secrets",
            help="Serve Alchemy v2 without secret keys: its secrets reach Kafka as sent.",
        ),
    ] = False,
    insecure_http: Annotated[
        bool,
        typer.Option(
            "--insecure-http",
            help="Serve Alchemy v2 on a non-loopback address without TLS (its secrets then "
            "cross the network in plaintext).",
        ),
    ] = False,
    max_body_mib: Annotated[
        float, typer.Option("--max-body-mib", help="Largest request body (MiB); more gets 413.")
    ] = DEFAULT_MAX_BODY / _MIB,
    header_timeout: Annotated[
        float,
        typer.Option(
            "--header-timeout",
            help="Seconds a connection may take to send a request's headers (or stay idle).",
        ),
    ] = HEADER_TIMEOUT,
    bootstrap_servers: BootstrapServers = None,
    view_dir: ViewDir = None,
    topic_prefix: TopicPrefix = None,
) -> None:
    """Serve the store over HTTP with the protocol of Alchemy's remote state store.

    POST / with {"method", "params", "context": {"chain": [...]}}; HEAD / answers 200 once
    connected to Kafka; GET /metrics serves Prometheus metrics. See clients/alchemy for the
    JavaScript EvstateStateStore. With --alchemy-v2 (or secret keys set) it also answers
    Alchemy v2's /state/stacks/... routes, sealing their secrets at rest.
    """
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    # aiokafka logs transient errors it retries itself; what it cannot recover from
    # reaches us as an EvstateError.
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    try:
        if not 0 <= port <= 65535:
            raise ConfigError(f"--port must be from 0 to 65535, got {port}")
        if not math.isfinite(max_body_mib) or not 0 < max_body_mib <= _MAX_BODY_MIB:
            raise ConfigError(
                f"--max-body-mib must be a number above 0 and at most {_MAX_BODY_MIB}, "
                f"got {max_body_mib}"
            )
        if (tls_cert is None) != (tls_key is None):
            raise ConfigError("--tls-cert and --tls-key go together")
        tls = None if tls_cert is None or tls_key is None else tls_context(tls_cert, tls_key)
        settings = Settings.from_env(
            **settings_overrides(bootstrap_servers, view_dir, topic_prefix),
            secret_key_file=secret_key_file,
        )
        keys = load_secret_keys(settings)
        v2 = alchemy_v2 if alchemy_v2 is not None else keys is not None
        if v2:
            check_exposure(host, tls=tls is not None, allow=insecure_http)
        app = create_app(
            settings,
            token=token,
            metrics_token=metrics_token,
            auth_file=auth_file,
            access_log=access_log,
            max_body=max(1, int(max_body_mib * _MIB)),
            alchemy_v2=v2,
            secret_keys=keys,
            plaintext_secrets=plaintext_secrets,
        )

        def listening(url: str) -> None:
            out.print(f"listening on {url}", highlight=False, soft_wrap=True)
            err.print(
                f"evstate serve: Kafka {settings.bootstrap_servers}, topics "
                f"{settings.state_topic}/{settings.history_topic}, view {settings.view_dir}",
                highlight=False,
                soft_wrap=True,
            )

        asyncio.run(
            run_server(
                app,
                host=host,
                port=port,
                on_listening=listening,
                header_timeout=header_timeout,
                tls=tls,
            )
        )
    except EvstateError as exc:
        raise fail(exc) from exc
    except OSError as exc:  # the port is taken, the address is not ours, ...
        error_line(f"cannot listen on {host}:{port}: {exc.strerror or exc}")
        raise typer.Exit(2) from exc


def secret_key(
    kid: Annotated[
        str, typer.Argument(metavar="[KEY_ID]", help="The new key's id (A-Z a-z 0-9 _ . -).")
    ] = "k1",
) -> None:
    """Print a new key for sealing Alchemy v2 secrets: KEY_ID:<base64 of 32 random bytes>.

    Put it first in the key file (--secret-key-file) or EVSTATE_SECRET_KEYS; keep older
    keys after it until no stored record needs them.
    """
    try:
        typer.echo(new_secret_key(kid))
    except EvstateError as exc:
        raise fail(exc) from exc


def register(app: typer.Typer) -> None:
    """Add ``serve`` and ``secret-key`` to ``app``."""
    app.command("serve")(serve)
    app.command("secret-key")(secret_key)
