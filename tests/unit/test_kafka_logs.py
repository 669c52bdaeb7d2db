"""aiokafka's retry chatter is demoted to DEBUG; what it cannot retry is left alone."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import aiokafka.errors as kerr
import pytest

from evstate.kafka._logs import quiet_retries


class _Keep(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.NOTSET)  # as basicConfig's handler: no level of its own
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def kept() -> Iterator[_Keep]:
    handler = _Keep()
    root = logging.getLogger("aiokafka")
    root.addHandler(handler)
    before = root.level
    try:
        yield handler
    finally:
        root.removeHandler(handler)
        root.setLevel(before)


def test_retry_chatter_is_dropped_unless_debug_is_on(kept: _Keep) -> None:
    fetcher = logging.getLogger("aiokafka.consumer.fetcher")
    quiet_retries()
    logging.getLogger("aiokafka").setLevel(logging.INFO)
    fetcher.error("Failed fetch offsets from %s: %s", 1, kerr.NotLeaderForPartitionError("tp"))
    fetcher.warning("Retrying: %s", kerr.RequestTimedOutError())
    assert kept.records == []

    fetcher.error("Unexpected error in fetcher: %s", kerr.TopicAuthorizationFailedError())
    fetcher.error("Unable connect to node with id %s: %s", 1, OSError("refused"))
    assert [r.levelname for r in kept.records] == ["ERROR", "ERROR"]

    logging.getLogger("aiokafka").setLevel(logging.DEBUG)
    fetcher.error("Failed fetch offsets from %s: %s", 1, kerr.NotLeaderForPartitionError("tp"))
    assert kept.records[-1].levelname == "DEBUG"
    assert "NotLeaderForPartitionError" in kept.records[-1].getMessage()


def test_quiet_retries_leaves_other_loggers_alone() -> None:
    quiet_retries()
    quiet_retries()  # idempotent
    fetcher = logging.getLogger("aiokafka.consumer.fetcher")
    assert len([f for f in fetcher.filters if type(f).__name__ == "_DemoteRetries"]) == 1
    assert not logging.getLogger("evstate").filters
    assert not logging.getLogger().filters
