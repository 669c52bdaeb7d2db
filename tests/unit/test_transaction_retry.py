"""The transactional producer's quick retry of a refused first add-partitions (no broker)."""

from __future__ import annotations

import aiokafka.producer.sender as ksender

from evstate.kafka import produce


def test_a_refused_first_add_partitions_is_retried_after_a_millisecond() -> None:
    # aiokafka keeps this back-off in a module constant; if a release renames it, the
    # patch would silently do nothing and every lone write would wait 20 ms again.
    assert hasattr(ksender, "BACKOFF_OVERRIDE")
    before = ksender.BACKOFF_OVERRIDE
    try:
        produce._quick_first_add()
        assert ksender.BACKOFF_OVERRIDE == produce.FIRST_ADD_RETRY == 0.001
    finally:
        ksender.BACKOFF_OVERRIDE = before
