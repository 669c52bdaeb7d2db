"""Prometheus metrics: what an operator watches (exported by ``evstate serve`` at /metrics).

Counters, histograms and gauges are process-wide, labelled by topic, so several clients in
one process add up per topic. The modules that do the work update them through the small
helpers here; ``evstate serve`` renders them (see :mod:`evstate.serve.metrics`).

============================================  ==============================================
metric                                        what
============================================  ==============================================
``evstate_writes_total{topic,outcome}``       events written: ``ok``, ``failed`` (Kafka did
                                              not acknowledge), ``refused`` (too large,
                                              nothing sent)
``evstate_write_seconds{topic}``              a write's call to its acknowledgement
``evstate_consistency_waits_total``           reads waiting for the view, by ``consistency``
``{topic,consistency,outcome}``               and ``outcome`` (``ok``, ``timeout``,
                                              ``failed``)
``evstate_consistency_wait_seconds``          how long those waits took
``evstate_view_records_applied_total{topic}`` state-topic records applied to the view
``evstate_view_poison_records_total{topic}``  records the view could not read and skipped
``evstate_view_applied_offset``               the view's position per partition (offsets
``{topic,partition}``                         below it are applied)
``evstate_view_lag{topic,partition}``         offsets committed to the partition, not yet
                                              applied (as of the view's last fetch)
``evstate_watch_lag{topic,group}``            offsets committed, not yet handled by this
                                              process's watchers of the group
``evstate_http_requests_total``               requests ``evstate serve`` answered
``{method,status}``
============================================  ==============================================
"""

from __future__ import annotations

import functools
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager

from prometheus_client import Counter, Gauge, Histogram

from evstate.errors import (
    ConflictError,
    ConsistencyTimeout,
    LockError,
    SerdeError,
    ValidationError,
)

_SECONDS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)

RECORDS_APPLIED = Counter(
    "evstate_view_records_applied",
    "State-topic records applied to the local view.",
    ["topic"],
)
POISON_RECORDS = Counter(
    "evstate_view_poison_records",
    "State-topic records the view could not read and skipped (see the log for positions).",
    ["topic"],
)
WRITES = Counter(
    "evstate_writes",
    "Events written, by outcome (ok; failed: not acknowledged; refused: nothing sent).",
    ["topic", "outcome"],
)
WRITE_SECONDS = Histogram(
    "evstate_write_seconds",
    "Time from a write's call to Kafka's acknowledgement (commit, with history).",
    ["topic"],
    buckets=_SECONDS,
)
CONSISTENCY_WAITS = Counter(
    "evstate_consistency_waits",
    "Reads that waited for the view to reach a position, by consistency and outcome.",
    ["topic", "consistency", "outcome"],
)
CONSISTENCY_SECONDS = Histogram(
    "evstate_consistency_wait_seconds",
    "Time a read waited for the view to reach the position it must see.",
    ["topic", "consistency"],
    buckets=_SECONDS,
)
VIEW_APPLIED_OFFSET = Gauge(
    "evstate_view_applied_offset",
    "The view's position in a partition of the state topic: offsets below it are applied.",
    ["topic", "partition"],
)
VIEW_LAG = Gauge(
    "evstate_view_lag",
    "Offsets committed to a partition of the state topic that the view has not applied yet.",
    ["topic", "partition"],
)
WATCH_LAG = Gauge(
    "evstate_watch_lag",
    "Offsets committed to the watched topic that this process's watchers of a group have "
    "not handled yet (as of their last fetch).",
    ["topic", "group"],
)
HTTP_REQUESTS = Counter(
    "evstate_http_requests",
    "Requests evstate serve answered, by HTTP method and status.",
    ["method", "status"],
)


@contextmanager
def timed_write(topic: str) -> Iterator[None]:
    """Count the write inside the block by its outcome, and time it."""
    started = time.perf_counter()
    try:
        yield
    except (ValidationError, SerdeError, LockError, ConflictError):  # nothing was sent
        _writes(topic, "refused").inc()
        raise
    except Exception:  # a cancelled write is not counted
        _writes(topic, "failed").inc()
        raise
    _writes(topic, "ok").inc()
    _write_seconds(topic).observe(time.perf_counter() - started)


# Every write counts itself: its labelled children are looked up once (labels() takes a
# lock and builds its key each call). No write metric's labels are ever removed.
@functools.lru_cache(maxsize=1024)
def _writes(topic: str, outcome: str) -> Counter:
    return WRITES.labels(topic, outcome)


@functools.lru_cache(maxsize=1024)
def _write_seconds(topic: str) -> Histogram:
    return WRITE_SECONDS.labels(topic)


class timed_consistency:  # lower case: used like timed_write
    """Count the consistency wait inside the block by its outcome, and time it.

    A class, not a generator: every read enters it, and this costs a third as much.
    """

    __slots__ = ("_consistency", "_started", "_topic")

    def __init__(self, topic: str, consistency: str) -> None:
        self._topic = topic
        self._consistency = consistency
        self._started = 0.0

    def __enter__(self) -> None:
        self._started = time.perf_counter()

    def __exit__(self, kind: type[BaseException] | None, *_: object) -> None:
        if kind is None:
            outcome = "ok"
        elif issubclass(kind, ConsistencyTimeout):
            outcome = "timeout"
        elif issubclass(kind, Exception):
            outcome = "failed"
        else:  # a cancelled read is not counted
            return
        _waited(self._topic, self._consistency, outcome, self._started)


def _waited(topic: str, consistency: str, outcome: str, started: float) -> None:
    _waits(topic, consistency, outcome).inc()
    _wait_seconds(topic, consistency).observe(time.perf_counter() - started)


# Every read counts its wait: children looked up once, as the writes' (never removed).
@functools.lru_cache(maxsize=1024)
def _waits(topic: str, consistency: str, outcome: str) -> Counter:
    return CONSISTENCY_WAITS.labels(topic, consistency, outcome)


@functools.lru_cache(maxsize=1024)
def _wait_seconds(topic: str, consistency: str) -> Histogram:
    return CONSISTENCY_SECONDS.labels(topic, consistency)


def view_positions(topic: str, positions: Mapping[int, tuple[int, int | None]]) -> None:
    """Set the view's applied offset and lag per partition.

    Args:
        topic: the state topic.
        positions: partition -> (the view's position, the partition's last stable offset
            as last fetched, or None while unknown).
    """
    for partition, (applied, end) in positions.items():
        VIEW_APPLIED_OFFSET.labels(topic, str(partition)).set(applied)
        if end is not None:
            VIEW_LAG.labels(topic, str(partition)).set(max(0, end - applied))


def watch_lag(topic: str, group: str, lag: int) -> None:
    """Set how far a group's watchers in this process are behind."""
    WATCH_LAG.labels(topic, group).set(lag)
