"""The transactional producer's quick retry of a refused first add-partitions (no broker)."""

from __future__ import annotations

import aiokafka.producer.sender as ksender
from aiokafka import AIOKafkaProducer

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


def test_the_transaction_manager_calls_an_opened_ahead_transaction_uses_exist() -> None:
    # TransactionalProducer opens the next transaction itself and has its partitions added
    # through aiokafka's transaction manager; a release that renames these must fail here.
    from aiokafka.producer.transaction_manager import TransactionManager

    for name in ("maybe_add_partition_to_txn", "is_in_transaction", "wait_for_transaction_end"):
        assert callable(getattr(TransactionManager, name, None)), name
    producer_init = AIOKafkaProducer.__init__.__code__
    assert "_txn_manager" in producer_init.co_names
