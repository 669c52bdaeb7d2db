"""Connecting to Kafka: options every aiokafka object gets, starting and stopping them.

Also the readiness probe (:func:`count_brokers`) and the one error every failed connection
becomes (:func:`unavailable`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from typing import Any

import aiokafka.errors as kerr
from aiokafka import AIOKafkaClient, AIOKafkaConsumer
from aiokafka.conn import collect_hosts, create_conn
from aiokafka.helpers import create_ssl_context

from evstate.config import Settings
from evstate.errors import AuthenticationError, BrokerUnavailableError, NotAuthorizedError
from evstate.kafka._logs import quiet_retries


def client_options(settings: Settings) -> dict[str, Any]:
    """The connection options every aiokafka object gets (SASL/TLS passed through)."""
    options: dict[str, Any] = {
        "bootstrap_servers": settings.bootstrap_servers,
        "client_id": settings.client_id,
        "request_timeout_ms": int(settings.request_timeout * 1000),
        "security_protocol": settings.security_protocol,
    }
    if settings.security_protocol in ("SSL", "SASL_SSL"):
        options["ssl_context"] = create_ssl_context(
            cafile=settings.ssl_cafile,
            certfile=settings.ssl_certfile,
            keyfile=settings.ssl_keyfile,
        )
    if settings.sasl_mechanism:
        options["sasl_mechanism"] = settings.sasl_mechanism
        options["sasl_plain_username"] = settings.sasl_plain_username
        options["sasl_plain_password"] = settings.sasl_plain_password
    return options


def unavailable(settings: Settings, exc: BaseException | None = None) -> BrokerUnavailableError:
    detail = f" ({exc})" if exc is not None and str(exc) else ""
    return BrokerUnavailableError(
        f"cannot reach Kafka at {settings.bootstrap_servers} within "
        f"{settings.connect_timeout:g}s{detail}; is the broker running "
        "(`evstate broker start`) and is EVSTATE_BOOTSTRAP_SERVERS right?",
        bootstrap_servers=settings.bootstrap_servers,
    )


# What a broker answers to credentials it refuses, or to a mechanism it does not offer.
_SASL_ERRORS = (
    kerr.SaslAuthenticationFailed,
    kerr.AuthenticationFailedError,
    kerr.AuthenticationMethodNotSupported,
    kerr.UnsupportedSaslMechanismError,
    kerr.IllegalSaslStateError,
)


async def _raise_if_sasl_refused(settings: Settings, timeout: float) -> None:
    """Raise AuthenticationError if a failed bootstrap was the broker refusing SASL.

    aiokafka's bootstrap logs the broker's SASL error and raises a bare "Unable to
    bootstrap", so one connection to each bootstrap server asks again, directly.
    """
    if not settings.sasl_mechanism:
        return
    options = client_options(settings)
    for host, port, _ in collect_hosts(settings.bootstrap_servers, randomize=False):
        try:
            conn = await asyncio.wait_for(
                create_conn(
                    host,
                    port,
                    client_id=options["client_id"],
                    request_timeout_ms=options["request_timeout_ms"],
                    ssl_context=options.get("ssl_context"),
                    security_protocol=settings.security_protocol,
                    sasl_mechanism=settings.sasl_mechanism,
                    sasl_plain_username=settings.sasl_plain_username,
                    sasl_plain_password=settings.sasl_plain_password,
                ),
                timeout,
            )
        except _SASL_ERRORS as exc:
            raise AuthenticationError(
                f"authentication failed: Kafka at {host}:{port} refused user "
                f"{settings.sasl_plain_username!r} with {settings.sasl_mechanism} "
                f"({exc}); check sasl_plain_username and sasl_plain_password, and that "
                "the broker has this user for this mechanism",
                bootstrap_servers=settings.bootstrap_servers,
                username=settings.sasl_plain_username,
                mechanism=settings.sasl_mechanism,
            ) from exc
        except (TimeoutError, kerr.KafkaError, OSError):
            continue
        conn.close()


async def stop_consumer(consumer: AIOKafkaConsumer) -> None:
    """Stop a consumer; a cancelled fetch inside it must not cancel the caller."""
    try:
        await consumer.stop()
    except kerr.KafkaError:
        pass
    except asyncio.CancelledError:
        # aiokafka re-raises the cancellation of a fetch task that was backing off after a
        # failed fetch; only a cancellation of our own task may propagate.
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            raise


# Seconds a failed aiokafka object may take to shut down before it is left to the GC.
_ABANDON_WAIT = 1.0


async def abandon(what: Any) -> None:
    """Stop an aiokafka object that failed, without letting a dead broker stall us."""
    close = what.stop if hasattr(what, "stop") else what.close
    with contextlib.suppress(Exception):
        await asyncio.wait_for(close(), _ABANDON_WAIT)


async def start_within(settings: Settings, what: Any) -> None:
    """Start an aiokafka object within ``connect_timeout``.

    Raises:
        AuthenticationError: the broker refused the SASL credentials.
        NotAuthorizedError: its ACLs refused what starting asked (a transactional id).
        BrokerUnavailableError: nothing answered in time.
    """
    quiet_retries()
    deadline = asyncio.get_running_loop().time() + settings.connect_timeout
    try:
        await asyncio.wait_for(what.start(), settings.connect_timeout)
    except (TimeoutError, kerr.KafkaError, OSError) as exc:
        await abandon(what)
        needs = next((n for kind, n in _NOT_AUTHORIZED.items() if isinstance(exc, kind)), None)
        if needs is not None:  # it answered: no
            who = settings.sasl_plain_username or "this client (no SASL user)"
            raise NotAuthorizedError(
                f"Kafka at {settings.bootstrap_servers} does not let {who} do this: {exc}; "
                f"grant it in the cluster's ACLs ({needs})"
            ) from exc
        # A refused login looks like an unreachable broker after aiokafka's bootstrap.
        left = max(1.0, deadline - asyncio.get_running_loop().time())
        await _raise_if_sasl_refused(settings, left)
        raise unavailable(settings, exc) from exc


# What each refusal means the principal lacks, for the message.
_NOT_AUTHORIZED: dict[type[Exception], str] = {
    kerr.TransactionalIdAuthorizationFailed: "writing needs WRITE on the partitions' "
    "transactional ids, evstate-PREFIX-p* or the transactional_id setting's, and on the topics",
    kerr.TopicAuthorizationFailedError: "reading needs READ on the topics, writing WRITE",
    kerr.ClusterAuthorizationFailedError: "a cluster ACL: CREATE to create the topics, or "
    "IDEMPOTENT_WRITE for a producer on an older broker",
    kerr.GroupAuthorizationFailedError: "a watcher in a group needs READ on the group",
}


class _ThreadFilter(logging.Filter):
    """Drops the records logged from one thread (see :func:`count_brokers`)."""

    def __init__(self, thread: int) -> None:
        super().__init__()
        self._thread = thread

    def filter(self, record: logging.LogRecord) -> bool:
        return record.thread != self._thread


# aiokafka logs every refused connection at ERROR; a probe's refusals are its answer.
_PROBE_LOGGERS = ("aiokafka", "aiokafka.conn")


async def count_brokers(bootstrap_servers: str, *, timeout: float = 5.0) -> int:
    """Ask the cluster for its metadata and return how many brokers it lists.

    aiokafka's own connection errors from this thread are kept out of the log while it
    asks: a broker that is still starting refuses connections, and the answer is the
    exception raised here, not a line per attempt.

    Args:
        bootstrap_servers: ``host:port[,host:port...]``.
        timeout: seconds to wait for an answer.

    Raises:
        BrokerUnavailableError: nothing answered a metadata request in time.
    """
    quiet = _ThreadFilter(threading.get_ident())
    for name in _PROBE_LOGGERS:
        logging.getLogger(name).addFilter(quiet)
    client = AIOKafkaClient(
        bootstrap_servers=bootstrap_servers,
        request_timeout_ms=max(1000, int(timeout * 1000)),
        client_id="evstate-probe",
    )
    try:
        await asyncio.wait_for(client.bootstrap(), timeout)
        return len(client.cluster.brokers())
    except (TimeoutError, kerr.KafkaError, OSError) as exc:
        raise BrokerUnavailableError(
            f"no Kafka broker answered at {bootstrap_servers} within {timeout:g}s",
            bootstrap_servers=bootstrap_servers,
        ) from exc
    finally:
        await client.close()
        for name in _PROBE_LOGGERS:
            logging.getLogger(name).removeFilter(quiet)
