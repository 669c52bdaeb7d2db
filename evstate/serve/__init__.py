"""``evstate serve``: the store over HTTP, speaking the protocol of Alchemy's remote state
service.

:mod:`~evstate.serve.protocol` (methods, statuses, the JSON envelope),
:mod:`~evstate.serve.backend` (the server's client and its readiness),
:mod:`~evstate.serve.app` (the aiohttp application and its runner),
:mod:`~evstate.serve.metrics` (``GET /metrics``),
:mod:`~evstate.serve.auth` (the principals in force, who is calling),
:mod:`~evstate.serve.audit` (the access log),
:mod:`~evstate.serve.stacks` (Alchemy v2's REST state routes).
"""

from evstate.serve.app import create_app, make_runner, run_server, tls_context
from evstate.serve.protocol import (
    DEFAULT_HOST,
    DEFAULT_MAX_BODY,
    DEFAULT_PORT,
    HEADER_TIMEOUT,
    METHODS,
    OPTIONS,
    details_of,
    status_of,
)
from evstate.serve.stacks import check_exposure, load_secret_keys

__all__ = [
    "DEFAULT_HOST",
    "DEFAULT_MAX_BODY",
    "DEFAULT_PORT",
    "HEADER_TIMEOUT",
    "METHODS",
    "OPTIONS",
    "check_exposure",
    "create_app",
    "details_of",
    "load_secret_keys",
    "make_runner",
    "run_server",
    "status_of",
    "tls_context",
]
