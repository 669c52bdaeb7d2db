"""evstate's change log (history topic, group commit, replay, rebuild after compaction)
against raw aiokafka, side by side in one run.

    python benchmarks/bench_history.py [--quick] [--bootstrap HOST:PORT]

Four comparisons, each alternating raw and evstate (AB BA ...) on the same broker:

1. lone write: ``store.set`` with history (state + history record in one transaction),
   with ``history=False`` (one record, idempotent producer), and a raw idempotent
   ``acks=all`` ``send_and_wait`` of the same encoded event. Also shown: a raw Kafka
   transaction writing the two records, the floor of an atomic two-topic write.
2. throughput: 64 concurrent writers, each setting its own key over and over (group
   commit shares transactions) vs raw batched sends (64 ``send()`` then ``gather``), in
   events/s. Also shown: ``history=False``, and raw transactions of 64 events each.
3. replay: ``client.state_at`` of a scope whose partition of the history topic holds N
   events vs a raw ``read_committed`` consumer of that partition, in events/s.
4. rebuild after compaction: N updates to 1k keys in a state topic configured to compact
   quickly, waited on until the cleaner has really removed the old versions, then
   ``client.rebuild()`` vs the same on a topic that only ever held the 1k keys' latest
   records (the ideal): the ratio shows that rebuild follows the live keys, not the
   updates. Also shown: the rebuild of an uncompacted topic with all N updates.

The state is a typical Alchemy resource (an AWS Lambda function, ~1.5 KB of JSON).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import io
import json
import shutil
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import fastavro
from _common import (
    CONSUMER_CONFIG,
    HISTORY_TOPIC_CONFIGS,
    TIMES,
    BrokerInfo,
    Measure,
    RawRecord,
    RequestClock,
    Row,
    at_least,
    at_most,
    base_parser,
    broker_for,
    bulk_load,
    count_records,
    create_topic_like_evstate,
    interleave,
    load_avro_schema,
    note,
    percentiles,
    print_report,
    raw_producer,
    raw_record,
    raw_transactional_producer,
    resource_state,
    run_steps,
    timed,
    unique_name,
)
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from evstate import EvstateClient, KafkaStateStore, Scope, Settings, State, keys
from evstate.serde import serialize_state

MS = 1e3
SCOPE = Scope("billing-api", "prod")
WRITERS = 64
# The pause before each write of the paced lone writer.
PACE = 0.005
# A state topic the log cleaner compacts within seconds: segments roll after half a
# second (on the next append), and any dirty segment is cleaned at once.
QUICK_COMPACTION = {
    "segment.ms": "500",
    "min.cleanable.dirty.ratio": "0.01",
    "min.compaction.lag.ms": "0",
    "max.compaction.lag.ms": "500",
    "delete.retention.ms": "100",
}


@dataclass(frozen=True, slots=True, kw_only=True)
class Plan:
    """How much to measure."""

    label: str
    rounds: int  # interleaved rounds of the lone-write comparison
    writes: int  # lone writes per side per round
    tp_rounds: int  # interleaved rounds of the 64-writer comparison
    per_writer: int  # writes of each of the 64 writers per round
    replay_events: int  # events in the replayed scope's partition
    replay_rounds: int
    updates: int  # updates loaded into the compacted state topic
    live_keys: int  # the keys they update
    rebuild_rounds: int
    compaction_wait: float  # seconds to wait for the cleaner at most


QUICK = Plan(
    label="quick",
    rounds=5,
    writes=25,
    tp_rounds=3,
    per_writer=8,
    replay_events=20_000,
    replay_rounds=2,
    updates=20_000,
    live_keys=1_000,
    rebuild_rounds=5,
    compaction_wait=120,
)
FULL = Plan(
    label="full",
    rounds=12,
    writes=60,
    tp_rounds=5,
    per_writer=30,
    replay_events=100_000,
    replay_rounds=3,
    updates=100_000,
    live_keys=1_000,
    rebuild_rounds=9,
    compaction_wait=300,
)


@dataclass
class Rig:
    """What every comparison needs: the broker, a scratch dir, the plan."""

    bootstrap: str
    tmp: Path
    plan: Plan

    def client(self, stem: str, **overrides: Any) -> EvstateClient:
        """A client with topics and a view of its own."""
        name = unique_name(stem)
        return EvstateClient(
            Settings(
                bootstrap_servers=self.bootstrap,
                view_dir=str(self.tmp / name),
                topic_prefix=name,
                actor="bench",
                **overrides,
            )
        )


@dataclass
class Writers:
    """evstate stores and raw producers writing the same records to alike topics."""

    store: KafkaStateStore  # history on: state + history record in one transaction
    store_plain: KafkaStateStore  # history=False: one record, idempotent producer
    producer: AIOKafkaProducer  # idempotent, acks=all, like store_plain's
    txn: AIOKafkaProducer  # transactional, like store's
    raw_state: str
    raw_history: str
    states: list[State]
    records: list[RawRecord]  # the raw side's version of ``states``


@contextlib.asynccontextmanager
async def writers(rig: Rig) -> AsyncIterator[Writers]:
    """Started evstate stores and raw producers, their topics created."""
    client, plain = rig.client("bench-hist"), rig.client("bench-hist-plain", history=False)
    partitions = client.settings.partitions
    raw_state, raw_history = unique_name("bench-hist-raw"), unique_name("bench-hist-raw-history")
    await create_topic_like_evstate(rig.bootstrap, raw_state, partitions)
    await create_topic_like_evstate(rig.bootstrap, raw_history, partitions, HISTORY_TOPIC_CONFIGS)
    states = [resource_state(SCOPE, i) for i in range(max(rig.plan.writes, WRITERS))]
    records = [raw_record(SCOPE, serialize_state(SCOPE, s), partitions) for s in states]
    producer, txn = raw_producer(rig.bootstrap), raw_transactional_producer(rig.bootstrap)
    async with client, plain:
        store, store_plain = client.store(SCOPE), plain.store(SCOPE)
        await store.init()
        await store_plain.init()
        await producer.start()
        await txn.start()
        try:
            yield Writers(
                store, store_plain, producer, txn, raw_state, raw_history, states, records
            )
        finally:
            await txn.stop()
            await producer.stop()


def _send(producer: AIOKafkaProducer, topic: str, r: RawRecord) -> Any:
    return producer.send(topic, r.value, key=r.key, partition=r.partition, headers=r.headers)


async def _transact(w: Writers, records: list[RawRecord]) -> None:
    """The raw side of a (grouped) set: each record to both topics, in one transaction."""
    async with w.txn.transaction():
        topics = (w.raw_state, w.raw_history)
        sent = [await _send(w.txn, topic, r) for r in records for topic in topics]
        await asyncio.gather(*sent)


# -- 1 and 2: writes -------------------------------------------------------------------


async def compare_writes(rig: Rig) -> list[Row]:
    """1 and 2: lone set vs send_and_wait; 64 concurrent writers vs batched sends."""
    async with writers(rig) as w:
        rows = await _lone_writes(rig.plan, w)
        note(f"{WRITERS} concurrent writers ...")
        return rows + await _concurrent_writes(rig.plan, w)


Timer = Callable[[Awaitable[object]], Awaitable[float]]


def _lone_measures(plan: Plan, w: Writers, time_it: Timer) -> dict[str, Measure]:
    """One writer's writes, one after another, each timed by ``time_it``: raw
    send_and_wait, a raw transaction (state + history), evstate with and without history."""
    states, records = w.states[: plan.writes], w.records[: plan.writes]

    async def raw() -> list[float]:
        return [
            await time_it(
                w.producer.send_and_wait(
                    w.raw_state, r.value, key=r.key, partition=r.partition, headers=r.headers
                )
            )
            for r in records
        ]

    async def raw_txn() -> list[float]:
        return [await time_it(_transact(w, [r])) for r in records]

    async def ev() -> list[float]:
        return [await time_it(w.store.set(s.id, s)) for s in states]

    async def ev_plain() -> list[float]:
        return [await time_it(w.store_plain.set(s.id, s)) for s in states]

    return {"raw": raw, "raw_txn": raw_txn, "evstate": ev, "evstate_plain": ev_plain}


async def _lone_writes(plan: Plan, w: Writers) -> list[Row]:
    measures = _lone_measures(plan, w, timed)
    await interleave(1, **measures)  # warm-up
    got = await interleave(plan.rounds, **measures)
    p = {name: percentiles(samples) for name, samples in got.items()}
    rows = []
    for q in (50, 99):
        rows.append(
            Row(
                f"lone set (history) vs send_and_wait p{q}",
                p["raw"][q] * MS,
                p["evstate"][q] * MS,
                "ms",
                goal=at_most(4) if q == 50 else None,
            )
        )
    for q in (50, 99):
        rows.append(
            Row(
                f"lone set (history off) vs send_and_wait p{q}",
                p["raw"][q] * MS,
                p["evstate_plain"][q] * MS,
                "ms",
            )
        )
    for q in (50, 99):
        rows.append(
            Row(
                f"lone set (history) vs raw transaction p{q}",
                p["raw_txn"][q] * MS,
                p["evstate"][q] * MS,
                "ms",
                note=""
                if q == 99
                else "raw: one Kafka transaction writing the state and the history record "
                "(acks=all, idempotent): the floor of an atomic two-topic write",
            )
        )
    return rows + await _paced_writes(plan, w) + await _where_the_time_goes(plan, w)


async def _paced_writes(plan: Plan, w: Writers) -> list[Row]:
    """A lone writer that works between writes (as a deploy does between resources):
    each set or raw write after a pause of ``PACE``, the pause not timed."""

    async def after_pause(op: Awaitable[object]) -> float:
        await asyncio.sleep(PACE)
        return await timed(op)

    measures = _lone_measures(plan, w, after_pause)
    del measures["evstate_plain"]
    got = await interleave(plan.rounds, **measures)
    p = {name: percentiles(samples) for name, samples in got.items()}
    paced = f"{PACE * MS:g} ms apart"
    return [
        Row(
            f"lone set (history), {paced}, vs send_and_wait p50",
            p["raw"][50] * MS,
            p["evstate"][50] * MS,
            "ms",
            note=f"each write after a {PACE * MS:g} ms pause (not timed), as a deploy works "
            "between resources: evstate's next transaction is open and its partitions "
            "added by then",
        ),
        Row(
            f"lone set (history), {paced}, vs send_and_wait p99",
            p["raw"][99] * MS,
            p["evstate"][99] * MS,
            "ms",
        ),
        Row(
            f"lone set (history), {paced}, vs raw transaction p50",
            p["raw_txn"][50] * MS,
            p["evstate"][50] * MS,
            "ms",
        ),
    ]


async def _where_the_time_goes(plan: Plan, w: Writers) -> list[Row]:
    """A lone set's time by Kafka request, against a raw transaction's (means, ms).

    Means, not percentiles, so the parts add up to the whole. Only the time a request
    spends inside a set counts: evstate adds the next transaction's partitions as soon as
    the previous one commits, so with back-to-back sets that request overlaps the next
    set's own work, and with a pause between sets it is over before the set begins.
    "The rest" is what is not a request: for evstate, deciding, encoding and handing the
    event to its sequencer.
    """
    clock = RequestClock()
    raw_txn = _lone_measures(plan, w, functools.partial(clock.window, "raw_txn"))["raw_txn"]
    ev = _lone_measures(plan, w, functools.partial(clock.window, "evstate"))["evstate"]
    with clock.running():
        got = await interleave(plan.rounds, raw_txn=raw_txn, evstate=ev)
    sides = {"raw_txn": "bench-txn", "evstate": "evstate-"}
    parts: dict[str, dict[str, float]] = {}
    for side, prefix in sides.items():
        n = len(got[side])
        mean = {kind: clock.inside(side, prefix, kind) / n for kind in RequestClock.KINDS.values()}
        adds = clock.of(prefix, "add-partitions")
        mean["retries"] = len(adds) / n - 1
        mean["ahead"] = sum(end - start for start, end in adds) / n - mean["add-partitions"]
        mean["rest"] = sum(got[side]) / n - sum(mean[k] for k in RequestClock.KINDS.values())
        mean["total"] = sum(got[side]) / n
        parts[side] = mean
    rows = []
    for part, label in (
        ("total", "whole set / transaction"),
        ("add-partitions", "add-partitions requests (retries included)"),
        ("produce", "produce request (state + history record)"),
        ("end-transaction", "end-transaction request"),
        ("rest", "the rest (not a Kafka request)"),
    ):
        rows.append(
            Row(
                f"lone set, mean time in {label} vs raw transaction",
                parts["raw_txn"][part] * MS,
                parts["evstate"][part] * MS,
                "ms",
                note="where a lone set's time goes, request by request, timed on the "
                "client from send to handled response; a request counts only while a set "
                "(or raw transaction) is waiting on it"
                if part == "total"
                else "",
            )
        )
    rows.append(
        Row(
            "lone set, add-partitions time outside the set (opened ahead) vs raw transaction",
            parts["raw_txn"]["ahead"] * MS,
            parts["evstate"]["ahead"] * MS,
            "ms",
        )
    )
    rows.append(
        Row(
            "lone set, add-partitions retried (CONCURRENT_TRANSACTIONS) per transaction",
            parts["raw_txn"]["retries"],
            parts["evstate"]["retries"],
            "",
        )
    )
    return rows


async def _concurrent_writes(plan: Plan, w: Writers) -> list[Row]:
    k = plan.per_writer
    states, records = w.states[:WRITERS], w.records[:WRITERS]
    events = len(states) * k

    def writers_of(store: KafkaStateStore) -> Any:
        async def measure() -> list[float]:
            async def writer(state: State) -> None:
                for _ in range(k):  # each its own key, one set after another
                    await store.set(state.id, state)

            start = time.perf_counter()
            await asyncio.gather(*(writer(s) for s in states))
            return [events / (time.perf_counter() - start)]

        return measure

    async def raw() -> list[float]:
        start = time.perf_counter()
        for _ in range(k):
            sent = [await _send(w.producer, w.raw_state, r) for r in records]
            await asyncio.gather(*sent)
        return [events / (time.perf_counter() - start)]

    async def raw_txn() -> list[float]:
        start = time.perf_counter()
        for _ in range(k):
            await _transact(w, records)
        return [events / (time.perf_counter() - start)]

    measures = {
        "raw": raw,
        "raw_txn": raw_txn,
        "evstate": writers_of(w.store),
        "evstate_plain": writers_of(w.store_plain),
    }
    await interleave(1, **measures)  # warm-up
    got = await interleave(plan.tp_rounds, **measures)
    med = {name: percentiles(samples)[50] for name, samples in got.items()}
    what = f"{len(states)} writers {TIMES} {k} sets"
    return [
        Row(
            f"{what} (history) vs batched sends",
            med["raw"],
            med["evstate"],
            "events/s",
            goal=at_least(0.3),
            higher_is_better=True,
            note=f"raw: {len(states)} send() then gather, acks=all idempotent, {k} times; "
            "throughputs are the median of the rounds",
        ),
        Row(
            f"{what} (history off) vs batched sends",
            med["raw"],
            med["evstate_plain"],
            "events/s",
            higher_is_better=True,
        ),
        Row(
            f"{what} (history) vs raw transactions",
            med["raw_txn"],
            med["evstate"],
            "events/s",
            goal=at_least(0.8),
            higher_is_better=True,
            note=f"raw: one transaction of {len(states)} events, each to the state and the "
            "history topic: what perfect group commit would do",
        ),
    ]


# -- 3: replay -------------------------------------------------------------------------


def updates(
    scopes: list[Scope], live_keys: int, count: int, partitions: int
) -> Iterator[RawRecord]:
    """``count`` genuine SET events updating ``live_keys`` keys spread over ``scopes``,
    round-robin, each update a new version with a new revision."""
    template = serialize_state(SCOPE, resource_state(SCOPE, 0))
    per_scope = -(-live_keys // len(scopes))
    for n in range(count):
        key_no = n % live_keys
        scope = scopes[key_no // per_scope]
        rid = f"fn-{key_no:07d}"
        output = {**template["output"], "revisionId": f"r-{n}"}
        tree = {**template, "id": rid, "fqn": f"{scope.path}/{rid}", "seq": n, "output": output}
        yield raw_record(scope, tree, partitions, version=n // live_keys + 1)


async def compare_replay(rig: Rig) -> list[Row]:
    """3: state_at vs a raw consumer of the scope's partition of the history topic."""
    plan = rig.plan
    client = rig.client("bench-replay", read_timeout=600.0)
    settings = client.settings
    partitions = settings.partitions
    partition = keys.partition_for(SCOPE, partitions)
    topic = settings.history_topic
    async with client:
        await client.ensure_topics()
        note(f"loading {plan.replay_events:,} events of {SCOPE.path} into {topic} ...")
        await bulk_load(
            rig.bootstrap, topic, updates([SCOPE], 1_000, plan.replay_events, partitions)
        )
        at = datetime.now(UTC)
        schema = load_avro_schema()

        async def raw(decode: bool) -> list[float]:
            consumer = AIOKafkaConsumer(bootstrap_servers=rig.bootstrap, **CONSUMER_CONFIG)
            await consumer.start()
            try:
                start = time.perf_counter()
                tp = TopicPartition(topic, partition)
                consumer.assign([tp])
                await consumer.seek_to_beginning(tp)
                end = (await consumer.end_offsets([tp]))[tp]
                got = 0
                while await consumer.position(tp) < end:
                    for rs in (await consumer.getmany(timeout_ms=500)).values():
                        got += len(rs)
                        if decode:
                            for r in rs:
                                event = fastavro.schemaless_reader(io.BytesIO(r.value), schema)
                                json.loads(event["state"])
                return [got / (time.perf_counter() - start)]
            finally:
                await consumer.stop()

        async def ev() -> list[float]:
            start = time.perf_counter()
            states = await client.state_at(SCOPE, at)
            took = time.perf_counter() - start
            if len(states) != min(1_000, plan.replay_events):
                raise AssertionError(f"state_at found {len(states)} states")
            return [plan.replay_events / took]

        measures = {"raw": lambda: raw(False), "decoded": lambda: raw(True), "evstate": ev}
        await interleave(1, **measures)  # warm-up
        got = await interleave(plan.replay_rounds, **measures)
    med = {name: percentiles(samples)[50] for name, samples in got.items()}
    what = f"state_at, {plan.replay_events:,} events"
    return [
        Row(
            f"{what} vs consume",
            med["raw"],
            med["evstate"],
            "events/s",
            goal=at_least(0.5),
            higher_is_better=True,
            note="raw: a read_committed consumer of the scope's partition of the history "
            "topic, records received, not decoded (consumer start included on both sides)",
        ),
        Row(
            f"{what} vs consume+decode",
            med["decoded"],
            med["evstate"],
            "events/s",
            higher_is_better=True,
            note="raw also decodes each record with fastavro and its state with json.loads",
        ),
    ]


# -- 4: rebuild after compaction -------------------------------------------------------


def rebuild_scopes() -> list[Scope]:
    """20 scopes of 50 keys."""
    return [Scope("stack", f"s{j:02d}") for j in range(20)]


async def _wait_for_compaction(
    rig: Rig, client: EvstateClient, latest: list[RawRecord], want: int
) -> tuple[int, float]:
    """Roll segments until at most ``want`` records are left; (records left, seconds)."""
    settings = client.settings
    topic, partitions = settings.state_topic, settings.partitions
    # One key per partition in use, re-sent unchanged: it rolls the active segment (the
    # cleaner never touches that one) without adding a live key.
    tickers = list({r.partition: r for r in latest}.values())
    producer = raw_producer(rig.bootstrap)
    await producer.start()
    start = time.perf_counter()
    try:
        while True:
            await asyncio.sleep(1.0)
            await asyncio.gather(*[await _send(producer, topic, r) for r in tickers])
            left = await count_records(rig.bootstrap, topic, partitions)
            waited = time.perf_counter() - start
            note(f"  {left:,} records left after {waited:.0f} s")
            if left <= want or waited > rig.plan.compaction_wait:
                return left, waited
    finally:
        await producer.stop()


async def compare_rebuild(rig: Rig) -> list[Row]:
    """4: rebuild of a compacted topic of N updates to 1k keys vs of the 1k keys alone."""
    plan = rig.plan
    timeout = {"read_timeout": 600.0}
    compacted = rig.client("bench-compacted", state_topic_configs=QUICK_COMPACTION, **timeout)
    ideal = rig.client("bench-ideal", **timeout)
    full = rig.client("bench-uncompacted", **timeout)
    partitions = compacted.settings.partitions
    scopes = rebuild_scopes()
    latest = list(updates(scopes, plan.live_keys, plan.updates, partitions))[-plan.live_keys :]
    async with compacted, ideal, full:
        for client in (compacted, ideal, full):
            await client.ensure_topics()
        note(f"loading {plan.updates:,} updates of {plan.live_keys:,} keys, twice ...")
        for client in (compacted, full):
            await bulk_load(
                rig.bootstrap,
                client.settings.state_topic,
                updates(scopes, plan.live_keys, plan.updates, partitions),
            )
        await bulk_load(rig.bootstrap, ideal.settings.state_topic, iter(latest))
        topic = compacted.settings.state_topic
        before = await count_records(rig.bootstrap, topic, partitions)
        note(f"{topic}: {before:,} records right after the load; compacting ...")
        # A little slack: the active segments (never cleaned) hold a few tickers.
        left, waited = await _wait_for_compaction(
            rig, compacted, latest, int(plan.live_keys * 1.05)
        )
        counts = {
            "written": plan.updates,
            "after load": before,
            "compacted": left,
            "ideal": await count_records(rig.bootstrap, ideal.settings.state_topic, partitions),
            "uncompacted": await count_records(
                rig.bootstrap, full.settings.state_topic, partitions
            ),
        }
        note(
            f"compaction took {waited:.0f} s; records: "
            + ", ".join(f"{k} {v:,}" for k, v in counts.items())
        )
        for client in (compacted, ideal, full):
            await client.catch_up()
        read: dict[str, int] = {}

        def rebuild(name: str, client: EvstateClient) -> Any:
            async def measure() -> list[float]:
                start = time.perf_counter()
                read[name] = await client.rebuild()
                took = time.perf_counter() - start
                count = await client.store(scopes[0]).count()
                if count != -(-plan.live_keys // len(scopes)):
                    raise AssertionError(f"{name}: {count} keys in {scopes[0].path} after rebuild")
                return [took]

            return measure

        measures = {
            "ideal": rebuild("ideal", ideal),
            "compacted": rebuild("compacted", compacted),
            "uncompacted": rebuild("uncompacted", full),
        }
        await interleave(1, **measures)  # warm-up
        got = await interleave(plan.rebuild_rounds, **measures)
    med = {name: percentiles(samples)[50] * MS for name, samples in got.items()}
    what = f"{plan.updates // 1000}k updates to {plan.live_keys // 1000}k keys"
    return [
        Row(
            f"rebuild, {what}, compacted vs ideal",
            med["ideal"],
            med["compacted"],
            "ms",
            goal=at_most(1.5),
            note=f"raw column: rebuild() of a topic that only ever held the "
            f"{plan.live_keys:,} keys' latest records; evstate column: of the compacted "
            "topic; median of rounds",
        ),
        Row(
            "rebuild, records read: compacted vs ideal",
            read["ideal"],
            read["compacted"],
            "records",
        ),
        Row(
            f"state topic records: written vs left after compaction ({waited:.0f} s)",
            counts["written"],
            counts["compacted"],
            "records",
            note=f"{counts['after load']:,} records right after the load, "
            f"{counts['compacted']:,} once the cleaner had run (the topic's own count)",
        ),
        Row(
            f"rebuild, {what}, compacted vs uncompacted",
            med["uncompacted"],
            med["compacted"],
            "ms",
            note=f"raw column: rebuild() of a topic holding all {counts['uncompacted']:,} "
            "updates (never compacted)",
        ),
    ]


# -- main ------------------------------------------------------------------------------


async def run(plan: Plan, broker: BrokerInfo) -> list[Row]:
    """Every comparison, in turn, in a scratch dir removed afterwards."""
    tmp = Path(tempfile.mkdtemp(prefix="evstate-bench-history-"))
    rig = Rig(broker.bootstrap_servers, tmp, plan)
    try:
        return await run_steps((compare_writes, compare_replay, compare_rebuild), rig)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


async def main() -> int:
    """Parse the command line, get a broker, run, print the report."""
    args = base_parser(__doc__.splitlines()[0]).parse_args()
    plan = QUICK if args.quick else FULL
    async with broker_for(args.bootstrap) as broker:
        rows = await run(plan, broker)
    print_report(f"evstate history vs raw aiokafka ({plan.label} mode)", rows, broker)
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
