"""evstate's ``watch`` against a raw aiokafka consumer, side by side in one run.

    python benchmarks/bench_watch.py [--quick] [--bootstrap HOST:PORT]

Two comparisons, each alternating raw and evstate (AB BA ...) on the same broker:

1. change-to-notification latency: from ``send_and_wait`` returning (an idempotent
   ``acks=all`` producer, the record already encoded) to a ``read_committed`` consumer at
   the topic's end receiving it, vs from ``store.set`` returning to a watcher receiving the
   ``ChangeEvent`` — with a consumer group (progress committed) and without. Also shown:
   the raw side with a transaction writing the state and history records, as ``set``
   does by default, so the transaction markers' cost is visible on its own.
2. catch-up throughput: events/s while reading a topic of N events from the start — a
   raw consumer receiving the records vs a watcher decoding each into a ``ChangeEvent``
   (with a group, committing as it goes).

The state is a typical Alchemy resource (an AWS Lambda function, ~1.5 KB of JSON).
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import shutil
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import fastavro
from _common import (
    CONSUMER_CONFIG,
    HISTORY_TOPIC_CONFIGS,
    BrokerInfo,
    RawRecord,
    Row,
    at_most,
    base_parser,
    broker_for,
    bulk_load,
    create_topic_like_evstate,
    interleave,
    note,
    percentiles,
    print_report,
    raw_producer,
    raw_record,
    raw_transactional_producer,
    resource_state,
    tail_consumer,
    unique_name,
)
from aiokafka import AIOKafkaConsumer, TopicPartition

import evstate
from evstate import EvstateClient, Scope, Settings
from evstate.serde import serialize_state
from evstate.watch import Watcher

MS = 1e3
SCOPE = Scope("billing-api", "prod")
GROUP_SCOPE = Scope("billing-api", "prod")
PLAIN_SCOPE = Scope("billing-api", "staging")
PARTITIONS = 12


@dataclass(frozen=True, slots=True, kw_only=True)
class Plan:
    label: str
    rounds: int  # interleaved rounds of the latency comparison
    per_round: int  # changes per round and side
    events: int  # events in the catch-up topic
    throughput_rounds: int


QUICK = Plan(label="quick", rounds=4, per_round=50, events=20_000, throughput_rounds=2)
FULL = Plan(label="full", rounds=10, per_round=100, events=100_000, throughput_rounds=3)


def load_avro_schema() -> Any:
    """The current ChangeEvent schema, parsed, as a raw reader would load it."""
    here = Path(evstate.__file__).resolve().parent
    for folder in (here / "schemas", here.parent / "schemas"):
        found = sorted(folder.glob("change_event.v*.avsc"))
        if found:
            return fastavro.parse_schema(json.loads(found[-1].read_text()))
    raise SystemExit("no change_event schema found beside evstate")


class Receipts:
    """When each key arrived, for senders waiting on their own change."""

    def __init__(self) -> None:
        self._waiting: dict[str, asyncio.Future[float]] = {}

    def expect(self, key: str) -> asyncio.Future[float]:
        future = asyncio.get_running_loop().create_future()
        self._waiting[key] = future
        return future

    def arrived(self, key: str) -> None:
        future = self._waiting.pop(key, None)
        if future is not None and not future.done():
            future.set_result(time.perf_counter())


@contextlib.asynccontextmanager
async def receiving(loop_body: Callable[[], Awaitable[None]]) -> AsyncIterator[None]:
    task = asyncio.create_task(loop_body())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def _latencies(
    send: Callable[[str], Awaitable[object]],
    receipts: Receipts,
    n: int,
    tag: str,
    also: tuple[str, list[float]] | None = None,
) -> list[float]:
    """``n`` changes one after another: seconds from ``send(key)`` returning until
    ``tag + key`` arrives (and, with ``also=(tag2, out)``, until ``tag2 + key`` does)."""
    out = []
    for i in range(n):
        key = f"{unique_name('k')}-{i}"
        arrived = receipts.expect(tag + key)
        second = receipts.expect(also[0] + key) if also else None
        await send(key)
        returned = time.perf_counter()
        # A receipt may be handled before the sender resumes; count that as zero.
        out.append(max(0.0, await asyncio.wait_for(arrived, 30) - returned))
        if also and second:
            also[1].append(max(0.0, await asyncio.wait_for(second, 30) - returned))
    return out


# -- 1. latency ------------------------------------------------------------------------


async def latency(plan: Plan, broker: BrokerInfo, tmp: str) -> list[Row]:
    bootstrap = broker.bootstrap_servers
    tree = resource_state(SCOPE, 0).to_json()
    # Raw: one topic for the plain producer; a state/history pair for the transactional one.
    raw_topic, raw_state, raw_history = (unique_name(f"bench-watch-raw-{t}") for t in "psh")
    await create_topic_like_evstate(bootstrap, raw_topic, PARTITIONS, HISTORY_TOPIC_CONFIGS)
    await create_topic_like_evstate(bootstrap, raw_state, PARTITIONS)
    await create_topic_like_evstate(bootstrap, raw_history, PARTITIONS, HISTORY_TOPIC_CONFIGS)
    record = raw_record(SCOPE, tree, PARTITIONS)
    receipts = Receipts()

    producer = raw_producer(bootstrap)
    txn = raw_transactional_producer(bootstrap)
    await producer.start()
    await txn.start()
    plain_consumer = await tail_consumer(bootstrap, raw_topic, PARTITIONS)
    txn_consumer = await tail_consumer(bootstrap, raw_history, PARTITIONS)
    settings = Settings(
        bootstrap_servers=bootstrap,
        view_dir=f"{tmp}/latency-view",
        topic_prefix=unique_name("bench-watch-lat"),
        partitions=PARTITIONS,
    )
    client = EvstateClient(settings)
    await client.start()
    await client.ensure_topics()
    # Each watcher has a scope of its own, so each change reaches one of them: a group
    # member of every partition, and a plain reader of its scope's partition only.
    grouped = Watcher(settings, GROUP_SCOPE, group=unique_name("bench-group"))
    plain = Watcher(settings, PLAIN_SCOPE)
    await grouped.start()
    await plain.start()
    # A raw consumer of the same history records the group watcher reads, in the same
    # process: what is left between the two is watch's own cost.
    same_consumer = await tail_consumer(bootstrap, settings.history_topic, PARTITIONS)
    same: list[float] = []

    async def consume(consumer: AIOKafkaConsumer) -> None:
        while True:
            for records in (await consumer.getmany(timeout_ms=1000)).values():
                for r in records:
                    receipts.arrived("raw:" + r.key.decode())

    async def consume_history(consumer: AIOKafkaConsumer) -> None:
        while True:
            for records in (await consumer.getmany(timeout_ms=1000)).values():
                for r in records:
                    receipts.arrived("same:" + r.key.decode().split(":", 1)[1])

    async def watch(watcher: Watcher, tag: str) -> None:
        async for event in watcher:
            receipts.arrived(tag + event.key)

    async def raw_send(key: str) -> None:
        await producer.send_and_wait(
            raw_topic,
            record.value,
            key=key.encode(),
            partition=record.partition,
            headers=record.headers,
        )

    async def raw_txn_send(key: str) -> None:
        async with txn.transaction():
            for topic in (raw_state, raw_history):
                await txn.send(
                    topic,
                    record.value,
                    key=key.encode(),
                    partition=record.partition,
                    headers=record.headers,
                )

    def setter(scope: Scope) -> Callable[[str], Awaitable[object]]:
        store = client.store(scope)

        async def send(key: str) -> None:
            state = resource_state(scope, 0)
            state.id = key
            await store.set(key, state)

        return send

    n = plan.per_round

    async def raw_round() -> list[float]:
        return await _latencies(raw_send, receipts, n, "raw:")

    async def raw_txn_round() -> list[float]:
        return await _latencies(raw_txn_send, receipts, n, "raw:")

    async def group_round() -> list[float]:
        return await _latencies(setter(GROUP_SCOPE), receipts, n, "group:", ("same:", same))

    async def plain_round() -> list[float]:
        return await _latencies(setter(PLAIN_SCOPE), receipts, n, "plain:")

    try:
        async with (
            receiving(lambda: consume(plain_consumer)),
            receiving(lambda: consume(txn_consumer)),
            receiving(lambda: consume_history(same_consumer)),
            receiving(lambda: watch(grouped, "group:")),
            receiving(lambda: watch(plain, "plain:")),
        ):
            measures = {
                "raw": raw_round,
                "raw_txn": raw_txn_round,
                "group": group_round,
                "plain": plain_round,
            }
            await interleave(1, **measures)  # warm-up
            same.clear()
            got = await interleave(plan.rounds, **measures)
    finally:
        await same_consumer.stop()
        await grouped.close()
        await plain.close()
        await client.close()
        await plain_consumer.stop()
        await txn_consumer.stop()
        await producer.stop()
        await txn.stop()
    raw, txn_p, grp, pln = (percentiles(got[k]) for k in ("raw", "raw_txn", "group", "plain"))
    own = percentiles(same)
    rows = []
    for q in (50, 99):
        rows.append(
            Row(f"notify p{q}: set -> watch (group)", raw[q] * MS, grp[q] * MS, "ms", at_most(1.5))
        )
    for q in (50, 99):
        rows.append(Row(f"notify p{q}: set -> watch (no group)", raw[q] * MS, pln[q] * MS, "ms"))
    rows.append(
        Row(
            "notify p50: raw transaction vs set -> watch",
            txn_p[50] * MS,
            grp[50] * MS,
            "ms",
            note="raw: a transaction writing a state and a history record (what set does), "
            "then a read_committed consumer",
        )
    )
    for q in (50, 99):
        rows.append(
            Row(
                f"watch's own share p{q}",
                own[q] * MS,
                grp[q] * MS,
                "ms",
                at_most(1.5),
                note=""
                if q == 99
                else "raw: a read_committed consumer of the same history records in the same "
                "process, for the same set calls: what remains is the watcher itself",
            )
        )
    return rows


# -- 2. catch-up throughput --------------------------------------------------------------


async def throughput(plan: Plan, broker: BrokerInfo) -> list[Row]:
    bootstrap = broker.bootstrap_servers
    prefix = unique_name("bench-watch-tp")
    topic = f"{prefix}.history"
    await create_topic_like_evstate(bootstrap, topic, PARTITIONS, HISTORY_TOPIC_CONFIGS)
    scopes = [Scope("billing-api", f"stage{i}") for i in range(48)]
    trees = [serialize_state(SCOPE, resource_state(SCOPE, i)) for i in range(64)]

    def records() -> Iterator[RawRecord]:
        for i in range(plan.events):
            scope = scopes[i % len(scopes)]
            tree = dict(trees[i % len(trees)], id=f"fn-{i:07d}")
            yield raw_record(scope, tree, PARTITIONS)

    note(f"loading {plan.events:,} events into {topic} ...")
    await bulk_load(bootstrap, topic, records())
    settings = Settings(bootstrap_servers=bootstrap, topic_prefix=prefix, partitions=PARTITIONS)

    schema = load_avro_schema()

    async def raw_rate(decode: bool) -> list[float]:
        consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, **CONSUMER_CONFIG)
        await consumer.start()
        try:
            tps = [TopicPartition(topic, p) for p in range(PARTITIONS)]
            consumer.assign(tps)
            await consumer.seek_to_beginning(*tps)
            got = 0
            start = time.perf_counter()
            while got < plan.events:
                for rs in (await consumer.getmany(timeout_ms=1000, max_records=2000)).values():
                    got += len(rs)
                    if decode:
                        for r in rs:
                            event = fastavro.schemaless_reader(io.BytesIO(r.value), schema)
                            json.loads(event["state"])
            return [got / (time.perf_counter() - start)]
        finally:
            await consumer.stop()

    async def watch_rate() -> list[float]:
        watcher = Watcher(settings, group=unique_name("bench-tp"), start="earliest")
        async with watcher:
            got = 0
            start = time.perf_counter()
            async for _event in watcher:
                got += 1
                if got == plan.events:
                    break
            return [got / (time.perf_counter() - start)]

    got = await interleave(
        plan.throughput_rounds,
        raw=lambda: raw_rate(decode=False),
        decoded=lambda: raw_rate(decode=True),
        evstate=watch_rate,
    )
    raw, decoded, ev = (max(got[k]) for k in ("raw", "decoded", "evstate"))
    return [
        Row(
            f"catch-up, {plan.events:,} events (best round)",
            raw,
            ev,
            "events/s",
            higher_is_better=True,
            note="raw: records received, not decoded; evstate: each decoded to a ChangeEvent",
        ),
        Row(
            "catch-up, raw decoding too",
            decoded,
            ev,
            "events/s",
            higher_is_better=True,
            note="raw: each record decoded with fastavro and its state with json.loads",
        ),
    ]


async def run(plan: Plan, broker: BrokerInfo) -> list[Row]:
    tmp = tempfile.mkdtemp(prefix="evstate-bench-watch-")
    try:
        start = time.perf_counter()
        note("latency: set -> watcher vs produce -> consumer ...")
        rows = await latency(plan, broker, tmp)
        note(f"done in {time.perf_counter() - start:.1f} s; catch-up throughput ...")
        rows += await throughput(plan, broker)
        note(f"done in {time.perf_counter() - start:.1f} s")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return rows


async def main() -> int:
    """Parse the command line, get a broker, run, print the report."""
    args = base_parser(__doc__.splitlines()[0]).parse_args()
    plan = QUICK if args.quick else FULL
    async with broker_for(args.bootstrap) as broker:
        rows = await run(plan, broker)
    print_report(f"evstate watch vs raw aiokafka ({plan.label} mode)", rows, broker)
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
