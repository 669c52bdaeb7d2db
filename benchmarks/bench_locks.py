"""Locks and compare-and-set: what the write rules cost, side by side in one run.

    python benchmarks/bench_locks.py [--quick] [--bootstrap HOST:PORT]

Rows (every pair alternated AB BA ... on the same broker, same topics):

- lock + release vs a plain ``set``: a lease is two decided events (LOCK, UNLOCK);
  vs two raw aiokafka transactions of the same two records (the ideal baseline: what
  Kafka itself charges for two transactions).
- a ``set`` while this client holds a lease on the scope vs a ``set`` without one (the
  token is attached and checked).
- a compare-and-set ``set(expected_version=N)`` vs a plain ``set`` (goal: at most 1.2 times).
- a plain ``set`` vs one raw aiokafka transaction of the same state + history records
  (the like-for-like baseline of every write).
- CAS throughput: 8 writers doing read-version-then-CAS on one key (they conflict and
  retry) vs on 8 keys (no conflicts), successful increments per second.
"""

from __future__ import annotations

import asyncio
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

from _common import (
    HISTORY_TOPIC_CONFIGS,
    BrokerInfo,
    Row,
    at_most,
    base_parser,
    broker_for,
    create_topic_like_evstate,
    interleave,
    note,
    percentiles,
    print_report,
    raw_record,
    raw_transactional_producer,
    resource_state,
    timed,
    unique_name,
)

from evstate import ConflictError, EvstateClient, Scope, Settings
from evstate.serde import serialize_state

MS = 1e3
STAGE = Scope("billing-api", "prod")
PARTITIONS = 12


@dataclass(frozen=True, slots=True, kw_only=True)
class Plan:
    """How much to measure."""

    label: str
    rounds: int  # interleaved rounds
    calls: int  # calls per side per round
    increments: int  # CAS increments per writer


QUICK = Plan(label="quick", rounds=6, calls=30, increments=15)
FULL = Plan(label="full", rounds=12, calls=100, increments=50)


async def latencies(plan: Plan, broker: BrokerInfo, tmp: Path) -> list[Row]:
    """lock + release, a set under a lease, a CAS set, a plain set, raw transactions."""
    bootstrap = broker.bootstrap_servers
    name = unique_name("bench-locks")
    settings = Settings(
        bootstrap_servers=bootstrap, view_dir=str(tmp / name), topic_prefix=name, actor="bench"
    )
    locked = Scope("billing-api", "locked")  # its own stage: the lease does not cover STAGE
    states = [resource_state(STAGE, i) for i in range(plan.calls)]
    locked_states = [resource_state(locked, i) for i in range(plan.calls)]
    raw_topics = (unique_name("bench-raw-state"), unique_name("bench-raw-history"))
    await create_topic_like_evstate(bootstrap, raw_topics[0], PARTITIONS)
    await create_topic_like_evstate(bootstrap, raw_topics[1], PARTITIONS, HISTORY_TOPIC_CONFIGS)
    records = [raw_record(STAGE, serialize_state(STAGE, s), PARTITIONS) for s in states]
    producers = [raw_transactional_producer(bootstrap) for _ in range(2)]
    for producer in producers:
        await producer.start()
    turn = 0

    async def raw_txn(count: int = 1) -> float:
        """``count`` raw transactions of one state + history record pair, taking turns."""
        nonlocal turn
        start = time.perf_counter()
        for i in range(count):
            producer = producers[turn]
            turn = 1 - turn
            r = records[i % len(records)]
            await producer.begin_transaction()
            futures = [
                await producer.send(
                    topic, r.value, key=r.key, partition=r.partition, headers=r.headers
                )
                for topic in raw_topics
            ]
            await asyncio.gather(*futures)
            await producer.commit_transaction()
        return time.perf_counter() - start

    try:
        async with EvstateClient(settings) as client:
            store, locked_store = client.store(STAGE), client.store(locked)
            await store.init()
            lease = await client.lock(locked, ttl=600)

            async def plain_set() -> list[float]:
                return [await timed(store.set(s.id, s)) for s in states]

            async def cas_set() -> list[float]:
                out = []
                for s in states:
                    version = await store.version(s.id)  # not timed: the read is a get
                    out.append(await timed(store.set(s.id, s, expected_version=version)))
                return out

            async def held_set() -> list[float]:
                return [await timed(locked_store.set(s.id, s)) for s in locked_states]

            async def lock_release() -> list[float]:
                out = []
                for _ in states:
                    start = time.perf_counter()
                    held = await client.lock(STAGE, ttl=60)
                    await held.release()
                    out.append(time.perf_counter() - start)
                return out

            async def raw_one() -> list[float]:
                return [await raw_txn(1) for _ in states]

            async def raw_two() -> list[float]:
                return [await raw_txn(2) for _ in states]

            measures = {
                "plain": plain_set,
                "cas": cas_set,
                "held": held_set,
                "lock": lock_release,
                "raw1": raw_one,
                "raw2": raw_two,
            }
            await interleave(1, **measures)  # warm-up: producers registered, keys exist
            got = await interleave(plan.rounds, **measures)
            await lease.release()
    finally:
        for producer in producers:
            await producer.stop()
    p = {k: percentiles(v) for k, v in got.items()}
    return [
        Row(
            "CAS set vs plain set p50",
            p["plain"][50] * MS,
            p["cas"][50] * MS,
            "ms",
            goal=at_most(1.2),
            note="raw column: store.set without expected_version; evstate column: "
            "store.set(expected_version=N) (the version read before, untimed)",
        ),
        Row(
            "set holding a lease vs without p50",
            p["plain"][50] * MS,
            p["held"][50] * MS,
            "ms",
            note="raw column: plain store.set; evstate column: store.set into a scope this "
            "client holds a lease on (token attached and checked)",
        ),
        Row(
            "lock + release vs plain set p50",
            p["plain"][50] * MS,
            p["lock"][50] * MS,
            "ms",
            note="two decided events (LOCK, UNLOCK) vs one",
        ),
        Row(
            "lock + release vs 2 raw transactions p50",
            p["raw2"][50] * MS,
            p["lock"][50] * MS,
            "ms",
            note="raw column: two aiokafka transactions of a state + history record pair "
            "(the ideal: what Kafka charges for two transactions)",
        ),
        Row(
            "plain set vs 1 raw transaction p50",
            p["raw1"][50] * MS,
            p["plain"][50] * MS,
            "ms",
            note="like-for-like: the same two records in one aiokafka transaction",
        ),
    ]


async def contention(plan: Plan, broker: BrokerInfo, tmp: Path) -> list[Row]:
    """8 CAS writers on one key vs on 8 keys: successful increments per second."""
    bootstrap = broker.bootstrap_servers
    name = unique_name("bench-cas")
    settings = Settings(
        bootstrap_servers=bootstrap, view_dir=str(tmp / name), topic_prefix=name, actor="bench"
    )
    writers = 8
    conflicts = {"one": 0, "eight": 0}
    async with EvstateClient(settings) as client:
        store = client.store(STAGE)
        await store.init()

        async def increment(key: str, label: str) -> None:
            for _ in range(plan.increments):
                while True:
                    version = await store.version(key)
                    state = resource_state(STAGE, version)
                    try:
                        await store.set(key, replace(state, id=key), expected_version=version)
                        break
                    except ConflictError:
                        conflicts[label] += 1

        async def run(label: str, keys: list[str]) -> list[float]:
            start = time.perf_counter()
            await asyncio.gather(*(increment(k, label) for k in keys))
            return [writers * plan.increments / (time.perf_counter() - start)]

        async def one_key() -> list[float]:
            return await run("one", ["hot"] * writers)

        async def eight_keys() -> list[float]:
            return await run("eight", [f"cold{i}" for i in range(writers)])

        await interleave(1, one=one_key, eight=eight_keys)
        got = await interleave(max(2, plan.rounds // 2), one=one_key, eight=eight_keys)
    note(f"conflicts retried: {conflicts['one']} on one key, {conflicts['eight']} on 8 keys")
    return [
        Row(
            "CAS throughput: 8 writers on 1 key vs on 8 keys",
            percentiles(got["eight"])[50],
            percentiles(got["one"])[50],
            "increments/s",
            higher_is_better=True,
            note="each writer: read the version, set(expected_version=...), retry on "
            "ConflictError; raw column: 8 keys (no conflicts), evstate column: 1 key",
        )
    ]


async def main() -> int:
    """Parse the command line, get a broker, run, print the report."""
    args = base_parser(__doc__.splitlines()[0]).parse_args()
    plan = QUICK if args.quick else FULL
    tmp = Path(tempfile.mkdtemp(prefix="evstate-bench-locks-"))
    rows: list[Row] = []
    try:
        async with broker_for(args.bootstrap) as broker:
            for step in (latencies, contention):
                note((step.__doc__ or step.__name__).splitlines()[0])
                start = time.perf_counter()
                rows += await step(plan, broker, tmp)
                note(f"done in {time.perf_counter() - start:.1f} s")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print_report(f"locks and compare-and-set ({plan.label} mode)", rows, broker)
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
