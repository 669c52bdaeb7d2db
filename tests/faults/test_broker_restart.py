"""The real broker stopped and started again in the middle of a write loop."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from evstate import ConsistencyTimeout, EvstateClient, Scope
from evstate.broker import LocalBroker
from evstate.errors import EvstateError
from evstate.history import record_event
from tests._guarantees import Guarantee
from tests._util import committed_records, free_port_block
from tests.contract import make_state

APP = Scope("app", "prod")
REQUEST_TIMEOUT = 5.0
FAILS_WITHIN = REQUEST_TIMEOUT + 5  # the request timeout, plus the 2 s in-sync check
ACKED_BEFORE_STOP = 100
RESUMED = 50

GUARANTEE = Guarantee(
    test="tests/faults/test_broker_restart.py::test_broker_restart_mid_write_loop",
    fault=f"the broker stopped (after {ACKED_BEFORE_STOP} acknowledged writes) and started "
    f"again 2 s after the first failure, under a write loop (request_timeout "
    f"{REQUEST_TIMEOUT:g} s)",
    asserted=(
        "while it is down, writes fail, each with an `EvstateError`",
        f"every failed write returns within {FAILS_WITHIN:g} s (request_timeout "
        f"{REQUEST_TIMEOUT:g} s + 5 s)",
        "a strong read during the outage fails with an `EvstateError` or returns a state "
        "that was acknowledged",
        f"once it is back, writing resumes ({RESUMED} more acknowledged within 90 s)",
        "every acknowledged write is in the history exactly once; nothing is duplicated",
    ),
)


@pytest.fixture
def own_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalBroker]:
    """A broker of this test's own: it is stopped and started under the writer."""
    broker = LocalBroker(tmp_path_factory.mktemp("restart"), port=free_port_block(2))
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


async def test_broker_restart_mid_write_loop(own_broker: LocalBroker, tmp_path: Path) -> None:
    bootstrap = own_broker.bootstrap_servers
    acked: list[int] = []
    failures: list[tuple[float, EvstateError]] = []
    async with EvstateClient(
        bootstrap_servers=bootstrap,
        view_dir=str(tmp_path / "view"),
        topic_prefix="restart",
        request_timeout=REQUEST_TIMEOUT,
        connect_timeout=3.0,
        read_timeout=3.0,
    ) as client:
        store = client.store(APP)
        await store.init()
        stop = asyncio.Event()

        async def write_loop() -> None:
            seq = 0
            while not stop.is_set():
                seq += 1  # a fresh seq per attempt: a failed write is never retried as is
                started = time.monotonic()
                try:
                    await store.set("k", make_state(APP, "k", seq=seq))
                    acked.append(seq)
                except EvstateError as exc:
                    failures.append((time.monotonic() - started, exc))
                    await asyncio.sleep(0.2)

        writer = asyncio.create_task(write_loop())
        while len(acked) < ACKED_BEFORE_STOP:
            await asyncio.sleep(0.05)
        acked_before_stop = len(acked)
        await asyncio.to_thread(own_broker.stop)
        down_since = time.monotonic()
        # A read waiting for a position nobody can reach now fails, or completes: never stale.
        read_outcome: object
        try:
            read_outcome = await store.get("k", consistency="strong")
        except (ConsistencyTimeout, EvstateError) as exc:
            read_outcome = exc
        while not failures and time.monotonic() - down_since < 60:
            await asyncio.sleep(0.2)
        await asyncio.sleep(2)
        await asyncio.to_thread(own_broker.start)
        failed_while_down = len(failures)
        recovered_at = len(acked)
        deadline = time.monotonic() + 90
        while len(acked) < recovered_at + RESUMED:
            assert time.monotonic() < deadline, f"writes did not resume: {failures[-1:]}"
            await asyncio.sleep(0.1)
        stop.set()
        await writer

    assert failures, "no write failed while the broker was down"
    assert all(isinstance(exc, EvstateError) for _, exc in failures)
    # Bounded (request timeout, plus the 2 s in-sync check on the error path), never a hang.
    assert max(took for took, _ in failures) < FAILS_WITHIN
    if not isinstance(read_outcome, Exception):
        assert read_outcome is not None
        assert read_outcome.seq in acked  # type: ignore[attr-defined]
    # Every acknowledged write is in the history exactly once.
    history = await committed_records(bootstrap, "restart.history")
    seqs = Counter(record_event(r).state["seq"] for r in history)  # type: ignore[index]
    assert all(seqs[s] == 1 for s in acked)
    assert not [s for s, n in seqs.items() if n > 1]
    print(
        f"FAULTS broker-restart acknowledged={len(acked)} (before stop {acked_before_stop}) "
        f"failed_while_down={failed_while_down} lost=0 duplicated=0 "
        f"slowest_failure={max(t for t, _ in failures):.1f}s"
    )
    GUARANTEE.record(
        acknowledged=len(acked),
        failed_while_down=failed_while_down,
        slowest_failure_s=round(max(t for t, _ in failures), 1),
        lost=0,
        duplicated=0,
    )
