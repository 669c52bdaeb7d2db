"""The metrics evstate counts on every read and write, by outcome (no I/O)."""

from __future__ import annotations

import asyncio

import pytest
from prometheus_client import REGISTRY

from evstate import metrics
from evstate.errors import ConsistencyTimeout, ValidationError


def _waits(topic: str, consistency: str, outcome: str) -> float:
    labels = {"topic": topic, "consistency": consistency, "outcome": outcome}
    return REGISTRY.get_sample_value("evstate_consistency_waits_total", labels) or 0.0


def _timed(topic: str, consistency: str) -> float:
    labels = {"topic": topic, "consistency": consistency}
    return REGISTRY.get_sample_value("evstate_consistency_wait_seconds_count", labels) or 0.0


def test_a_consistency_wait_is_counted_by_outcome() -> None:
    topic = "unit-metrics.state"
    with metrics.timed_consistency(topic, "session"):
        pass
    with pytest.raises(ConsistencyTimeout), metrics.timed_consistency(topic, "session"):
        raise ConsistencyTimeout(partition=0, wanted=5, reached=3, timeout=1.0)
    with pytest.raises(ValidationError), metrics.timed_consistency(topic, "session"):
        raise ValidationError("no such consistency")
    assert [_waits(topic, "session", o) for o in ("ok", "timeout", "failed")] == [1, 1, 1]
    assert _timed(topic, "session") == 3
    # The same children again: counted on, not started anew.
    with metrics.timed_consistency(topic, "session"):
        pass
    assert _waits(topic, "session", "ok") == 2


def test_a_cancelled_wait_is_not_counted() -> None:
    topic = "unit-metrics-cancel.state"
    with pytest.raises(asyncio.CancelledError), metrics.timed_consistency(topic, "strong"):
        raise asyncio.CancelledError
    assert [_waits(topic, "strong", o) for o in ("ok", "timeout", "failed")] == [0, 0, 0]
    assert _timed(topic, "strong") == 0
