"""What a ConsistencyTimeout says: a lagging view, or a transaction left open."""

from __future__ import annotations

from evstate import ConsistencyTimeout, EvstateError


def test_a_plain_timeout_names_partition_offsets_and_the_usual_causes() -> None:
    err = ConsistencyTimeout(partition=3, wanted=41, reached=17, timeout=10)
    assert isinstance(err, EvstateError)
    assert isinstance(err, TimeoutError)
    assert err.retriable
    assert (err.partition, err.wanted, err.reached, err.held_at) == (3, 41, 17, None)
    assert "did not reach offset 41 of partition 3 within 10s (applied up to 17)" in str(err)
    assert "lagging" in str(err)
    assert "transaction" not in str(err)


def test_a_timeout_behind_an_open_transaction_says_so_and_when_it_ends() -> None:
    err = ConsistencyTimeout(
        partition=3, wanted=41, reached=17, timeout=10, held_at=18, transaction_timeout=15
    )
    assert err.held_at == 18
    text = str(err)
    assert "a transaction left open at offset 18 holds the partition" in text
    assert "transaction timeout (15s)" in text
    assert "lagging" not in text
