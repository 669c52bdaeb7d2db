"""aiokafka's retry chatter, kept out of a user's output.

aiokafka logs, at WARNING or ERROR, errors that it retries by itself and that usually
pass within a moment (a fresh topic's leader, a coordinator moving): e.g. ``Failed fetch
offsets from 1: [Error 6] NotLeaderForPartitionError``. What it cannot recover from
reaches evstate's callers as an :class:`~evstate.errors.EvstateError` anyway, so such a
line is noise in a terminal. :func:`quiet_retries` demotes them to DEBUG: they stay
visible to whoever enables DEBUG for ``aiokafka``, and everything else aiokafka logs
(a refused connection, a non-retriable error) is left as it is.

It is installed by the Kafka adapter when it first connects, not on import.
"""

from __future__ import annotations

import logging

__all__ = ["is_retry_chatter", "quiet_retries"]


def _retriable(value: object) -> bool:
    # aiokafka's errors say themselves whether aiokafka retries them.
    return isinstance(value, BaseException) and getattr(value, "retriable", False) is True


def is_retry_chatter(record: logging.LogRecord) -> bool:
    """Whether ``record`` is aiokafka reporting an error it retries itself."""
    if record.levelno < logging.WARNING or not record.name.startswith("aiokafka"):
        return False
    args = record.args
    values = args.values() if isinstance(args, dict) else args or ()
    if any(_retriable(v) for v in values):
        return True
    return record.exc_info is not None and _retriable(record.exc_info[1])


class _DemoteRetries(logging.Filter):
    """Turns retry chatter into a DEBUG record, or drops it when DEBUG is not wanted."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not is_retry_chatter(record):
            return True
        if not logging.getLogger(record.name).isEnabledFor(logging.DEBUG):
            return False
        record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        return True


_FILTER = _DemoteRetries()


def quiet_retries() -> None:
    """Demote aiokafka's retry chatter to DEBUG (idempotent).

    A filter on a logger sees only the records logged to that logger, not its children's,
    so it goes on every ``aiokafka.*`` logger that exists (they are created when aiokafka's
    modules are imported, which the Kafka adapter has done by the time it calls this).
    """
    manager = logging.getLogger().manager
    for name in ["aiokafka", *list(manager.loggerDict)]:
        if name == "aiokafka" or name.startswith("aiokafka."):
            logger = logging.getLogger(name)
            if _FILTER not in logger.filters:
                logger.addFilter(_FILTER)
