"""Three brokers, replication factor 3, min.insync.replicas 2: brokers die under a writer.

Kill one broker in the middle of 1,000 writes: nothing acknowledged is lost and the writer
carries on. Kill a second: writes fail with an error naming too few in-sync replicas, and
still nothing acknowledged is lost. Bring both back: writing resumes.

Node 1 is the cluster's only controller (see :mod:`evstate.broker.cluster`), so the
brokers killed are nodes 2 and 3, with SIGKILL.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from evstate import EvstateClient, Scope
from evstate.broker import LocalBroker
from evstate.config import Settings
from evstate.errors import EvstateError, KafkaError
from evstate.history import record_event
from evstate.kafka import Admin
from evstate.store import KafkaStateStore
from tests._guarantees import Guarantee
from tests._util import committed_records, free_port_block
from tests.contract import make_state

pytestmark = pytest.mark.cluster

# Several scopes, so the written partitions have their leaders on every node.
SCOPES = [Scope("app", f"s{i}") for i in range(6)]
PREFIX = "cluster"
REQUEST_TIMEOUT = 8.0
WRITES = 1000
KILL_FIRST_AT = 300
TOO_FEW_REPLICAS = "too few in-sync replicas"
HANG = REQUEST_TIMEOUT + 20
FAILS_WITHIN = REQUEST_TIMEOUT + 5
REFUSALS = 3
RESUMED = 50

GUARANTEE = Guarantee(
    test="tests/faults/test_cluster.py::test_cluster_loses_brokers_under_a_writer",
    fault="3 brokers, replication factor 3, min.insync.replicas 2, under a write loop "
    f"(request_timeout {REQUEST_TIMEOUT:g} s): broker 2 SIGKILLed after {KILL_FIRST_AT} "
    "acknowledged writes, broker 3 once "
    f"{WRITES:,} are acknowledged, then both started again",
    asserted=(
        "both topics are created with min.insync.replicas 2",
        f"with one broker killed, writing carries on to {WRITES:,} acknowledged writes",
        f"with two killed, no write is acknowledged, and at least {REFUSALS} are refused "
        f'with an error naming "{TOO_FEW_REPLICAS}"',
        f"every failed write returns within {FAILS_WITHIN:g} s (request_timeout "
        f"{REQUEST_TIMEOUT:g} s + 5 s), and no write hangs (each ends within {HANG:g} s)",
        f"with both back, writing resumes ({RESUMED} more acknowledged within 120 s)",
        "every acknowledged write is in the history exactly once; a strong read returns "
        "the last acknowledged write or a later one",
    ),
)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalBroker]:
    """A three-node cluster of this module's own: its brokers are killed under a writer."""
    broker = LocalBroker(tmp_path_factory.mktemp("faultcluster"), port=free_port_block(9), nodes=3)
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


@dataclass
class Outcomes:
    """What the write loop saw: acknowledged seqs, and each failure with its duration."""

    acked: list[int] = field(default_factory=list)
    failed: list[tuple[int, float, EvstateError]] = field(default_factory=list)
    hung: int | None = None  # the seq of a write that neither succeeded nor failed

    def failures_since(self, mark: int) -> list[tuple[int, float, EvstateError]]:
        return self.failed[mark:]


async def _init(store: KafkaStateStore) -> None:
    """``store.init()``, tried again while a new topic is not yet known to every broker.

    Right after creating a topic, a broker that has not applied the metadata yet answers
    "unknown topic" to the config check of ``init``; ``init`` is idempotent.
    """
    for _ in range(50):
        try:
            await store.init()
            return
        except KafkaError:
            await asyncio.sleep(0.2)
    await store.init()


async def _wait(seen: Outcomes, condition: Callable[[], bool], what: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert seen.hung is None, f"write seq={seen.hung} hung for {HANG:g}s (waiting for {what})"
        assert time.monotonic() < deadline, f"no {what} within {timeout:g}s"
        await asyncio.sleep(0.05)


async def test_cluster_loses_brokers_under_a_writer(cluster: LocalBroker, tmp_path: Path) -> None:
    bootstrap = cluster.bootstrap_servers
    seen = Outcomes()
    client = EvstateClient(
        bootstrap_servers=bootstrap,
        view_dir=str(tmp_path / "view"),
        topic_prefix=PREFIX,
        request_timeout=REQUEST_TIMEOUT,
        connect_timeout=5.0,
        read_timeout=5.0,
    )
    await client.start()
    try:
        stores = [client.store(scope) for scope in SCOPES]
        for store in stores:
            await _init(store)
        admin = Admin(Settings(bootstrap_servers=bootstrap))
        await admin.start()
        try:
            for suffix in ("state", "history"):
                configs = await admin.topic_configs(f"{PREFIX}.{suffix}")
                assert configs["min.insync.replicas"] == "2"
        finally:
            await admin.stop()
        stop = asyncio.Event()

        async def write_loop() -> None:
            seq = 0
            while not stop.is_set():
                seq += 1  # a fresh seq per attempt: a failed write is never retried as is
                store = stores[seq % len(stores)]
                started = time.monotonic()
                key = f"k{seq % 10}"
                try:
                    # A write that neither succeeds nor fails in time is a hang: fail loudly.
                    async with asyncio.timeout(HANG):
                        await store.set(key, make_state(store.scope, key, seq=seq))
                    seen.acked.append(seq)
                except EvstateError as exc:
                    seen.failed.append((seq, time.monotonic() - started, exc))
                    await asyncio.sleep(0.2)
                except TimeoutError:
                    seen.hung = seq
                    return

        writer = asyncio.create_task(write_loop())
        try:
            # One broker dies in the middle of the 1,000 writes; the writer carries on.
            await _wait(seen, lambda: len(seen.acked) >= KILL_FIRST_AT, "first 300 writes", 120)
            await asyncio.to_thread(cluster.kill_node, 2)
            one_down = len(seen.failed)
            await _wait(
                seen, lambda: len(seen.acked) >= WRITES, "1,000 writes with one broker down", 180
            )
            failed_one_down = seen.failures_since(one_down)

            # A second one dies: min.insync.replicas=2 cannot be met any more.
            await asyncio.to_thread(cluster.kill_node, 3)
            two_down = len(seen.failed)
            acked_before_second = len(seen.acked)

            def refusals() -> int:
                return sum(TOO_FEW_REPLICAS in str(e) for _, _, e in seen.failures_since(two_down))

            await _wait(seen, lambda: refusals() >= REFUSALS, "refused for too few ISR", 90)
            failed_two_down = seen.failures_since(two_down)
            acked_two_down = len(seen.acked) - acked_before_second

            # Both come back: writing resumes.
            recovering = len(seen.failed)
            await asyncio.to_thread(cluster.start_node, 3)
            await asyncio.to_thread(cluster.start_node, 2)
            back = len(seen.acked)
            await _wait(seen, lambda: len(seen.acked) >= back + RESUMED, "writes resuming", 120)
            failed_recovering = seen.failures_since(recovering)
        finally:
            stop.set()
            await writer
        last = seen.acked[-1]
        latest = await stores[last % len(stores)].get(f"k{last % 10}", consistency="strong")
    finally:
        # A write stuck inside the client would stall its close too: fail, never hang.
        async with asyncio.timeout(HANG):
            await client.close()

    for seq, took, exc in seen.failed:
        print(f"failure seq={seq} after {took:.1f}s: {type(exc).__name__}: {exc}")
    # Nothing hangs: each failure came within the request timeout and a little.
    assert max(took for _, took, _ in seen.failed) < FAILS_WITHIN
    # With two brokers gone, writes are refused, and the error names the cause.
    assert acked_two_down == 0
    assert sum(TOO_FEW_REPLICAS in str(e) for _, _, e in failed_two_down) >= REFUSALS
    # Every acknowledged write is in the history exactly once.
    history = await committed_records(bootstrap, f"{PREFIX}.history")
    seqs = Counter(record_event(r).state["seq"] for r in history)  # type: ignore[index]
    lost = [s for s in seen.acked if seqs[s] == 0]
    assert not lost, f"{len(lost)} acknowledged writes lost: {lost[:20]}"
    assert not [s for s, n in seqs.items() if n > 1]
    # The latest state is readable: the last acknowledged write (or a later ambiguous one).
    assert latest is not None
    assert latest.seq >= last
    print(
        f"FAULTS cluster brokers_killed=2 acknowledged={len(seen.acked)} "
        f"(killed node 2 at {KILL_FIRST_AT}, node 3 at {acked_before_second}) "
        f"failed_while_one_down={len(failed_one_down)} "
        f"failed_while_two_down={len(failed_two_down)} acked_while_two_down={acked_two_down} "
        f"failed_while_coming_back={len(failed_recovering)} "
        f"lost=0 duplicated=0 slowest_failure={max(t for _, t, _ in seen.failed):.1f}s"
    )
    GUARANTEE.record(
        acknowledged=len(seen.acked),
        failed_while_one_down=len(failed_one_down),
        failed_while_two_down=len(failed_two_down),
        acknowledged_while_two_down=acked_two_down,
        failed_while_coming_back=len(failed_recovering),
        slowest_failure_s=round(max(t for _, t, _ in seen.failed), 1),
        lost=0,
        duplicated=0,
    )
