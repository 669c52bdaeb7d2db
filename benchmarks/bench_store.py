"""evstate's store against raw aiokafka, rocksdict and fastavro, side by side in one run.

    python benchmarks/bench_store.py [--quick] [--bootstrap HOST:PORT]

Five comparisons, each alternating raw and evstate (AB BA ...) on the same broker:

1. write: ``AIOKafkaProducer(acks="all", enable_idempotence=True).send_and_wait`` of the
   same Avro event, already encoded, to a topic configured like evstate's (compacted, same
   partitions) vs ``store.set``. Also shown: a raw transaction writing the state and
   history records (what a default ``set`` does), ``set`` with ``history=False`` (what the
   idempotent baseline does), and that baseline with a consumer tailing its topic in the
   same event loop (as evstate's view applier does).
2. read-your-write: send, then a consumer already positioned at the end receives the
   record vs ``store.set`` then ``store.get`` (and the same two variants).
3. read: ``Rdict.get`` + ``fastavro.schemaless_reader`` of the stored event (what a naive
   store keeping Avro events in RocksDB does) vs ``store.get``, with the default
   ``session`` consistency and with ``eventual``.
4. rebuild: a consumer reading the whole state topic and writing each fetched batch with a
   ``WriteBatch`` vs ``client.rebuild()``, in events/s.
5. scale: ``store.get`` in a view of 1k keys vs one of 1M (200k with ``--quick``); and on
   that topic, a fresh process's first read of one scope on an empty view vs its full
   catch-up (partition-scoped readiness: only the scope's partition is awaited).

The state is a typical Alchemy resource (an AWS Lambda function, ~1.5 KB of JSON).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import io
import json
import random
import shutil
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
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
    at_least,
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
    run_steps,
    tail_consumer,
    tailing,
    timed,
    unique_name,
)
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from rocksdict import Options, Rdict, WriteBatch

import evstate
from evstate import (
    EvstateClient,
    KafkaStateStore,
    Scope,
    Settings,
    State,
)
from evstate.serde import serialize_state

MS, US = 1e3, 1e6  # seconds -> unit
SCOPE = Scope("billing-api", "prod")
KEYS_PER_SCOPE = 1_000  # the scale views spread their keys over scopes of this size


@dataclass(frozen=True, slots=True, kw_only=True)
class Plan:
    """How much to measure."""

    label: str
    rounds: int  # interleaved rounds of every latency comparison
    writes: int  # writes (or write+reads) per side per round
    gets: int  # gets per side per round
    rebuild_events: int
    rebuild_rounds: int
    small: int  # keys in the small scale view
    large: int  # keys in the large one
    scale_gets: int  # gets per view per round


QUICK = Plan(
    label="quick",
    rounds=6,
    writes=15,
    gets=1_000,
    rebuild_events=20_000,
    rebuild_rounds=2,
    small=1_000,
    large=200_000,
    scale_gets=1_000,
)
FULL = Plan(
    label="full",
    rounds=12,
    writes=50,
    gets=3_000,
    rebuild_events=200_000,
    rebuild_rounds=3,
    small=1_000,
    large=1_000_000,
    scale_gets=3_000,
)


# -- the data --------------------------------------------------------------------------


def scale_records(count: int, partitions: int) -> Iterator[RawRecord]:
    """``count`` distinct resources, ``KEYS_PER_SCOPE`` per scope, cheaply varied."""
    template = serialize_state(SCOPE, resource_state(SCOPE, 0))
    for n in range(count):
        scope = scale_scope(n // KEYS_PER_SCOPE)
        rid = scale_key(n % KEYS_PER_SCOPE)
        output = {**template["output"], "revisionId": f"r-{n}"}
        tree = {**template, "id": rid, "fqn": f"{scope.path}/{rid}", "seq": n, "output": output}
        yield raw_record(scope, tree, partitions)


def scale_scope(j: int) -> Scope:
    """The ``j``-th scope of a scale view."""
    return Scope(f"stack-{j:04d}", "prod")


def scale_key(i: int) -> str:
    """The ``i``-th key of a scope in a scale view."""
    return f"fn-{i:07d}"


def load_avro_schema() -> Any:
    """The current ChangeEvent schema, parsed, as a raw reader would load it."""
    here = Path(evstate.__file__).resolve().parent
    for folder in (here / "schemas", here.parent / "schemas"):
        found = sorted(folder.glob("change_event.v*.avsc"))
        if found:
            return fastavro.parse_schema(json.loads(found[-1].read_text()))
    raise SystemExit("no change_event schema found beside evstate")


# -- raw Kafka -------------------------------------------------------------------------


async def raw_rebuild(bootstrap: str, topic: str, partitions: int, db_dir: Path) -> int:
    """Read ``topic`` from the start into a fresh RocksDB, a WriteBatch per fetch."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, **CONSUMER_CONFIG)
    await consumer.start()
    db = Rdict(str(db_dir), Options(raw_mode=True))
    read = 0
    try:
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        consumer.assign(tps)
        await consumer.seek_to_beginning()
        ends = await consumer.end_offsets(tps)
        while any([await consumer.position(tp) < ends[tp] for tp in tps]):
            fetched = await consumer.getmany(timeout_ms=500, max_records=20_000)
            batch = WriteBatch(raw_mode=True)
            for records in fetched.values():
                for r in records:
                    batch.put(r.key, r.value) if r.value is not None else batch.delete(r.key)
                read += len(records)
            db.write(batch)
    finally:
        db.close()
        await consumer.stop()
    Rdict.destroy(str(db_dir))
    return read


# -- the comparisons -------------------------------------------------------------------


@dataclass
class Rig:
    """What every comparison needs: the broker, a scratch dir, the plan."""

    bootstrap: str
    tmp: Path
    plan: Plan

    def settings(self, name: str, **overrides: Any) -> Settings:
        """Settings for an evstate client with its own topics and view."""
        return Settings(
            bootstrap_servers=self.bootstrap,
            view_dir=str(self.tmp / name),
            topic_prefix=name,
            actor="bench",
            **overrides,
        )


def latency_rows(
    what: str, raw: list[float], ev: list[float], unit: float, goal_p50: Any = None
) -> list[Row]:
    """p50 and p99 rows for two latency samples (seconds), the goal applying at p50."""
    r, e = percentiles(raw), percentiles(ev)
    name = {MS: "ms", US: "µs"}[unit]
    return [
        Row(f"{what} p50", r[50] * unit, e[50] * unit, name, goal=goal_p50),
        Row(f"{what} p99", r[99] * unit, e[99] * unit, name),
    ]


@dataclass
class WritePair:
    """evstate stores and raw producers writing the same records to alike topics."""

    store: KafkaStateStore  # default settings: state + history in one transaction
    store_plain: KafkaStateStore  # history=False: one record, idempotent producer
    producer: AIOKafkaProducer  # idempotent, like store_plain's
    txn: AIOKafkaProducer  # transactional, like store's
    raw_topic: str
    raw_history: str
    partitions: int
    states: list[State]
    records: list[RawRecord]  # the raw side's version of ``states``


@contextlib.asynccontextmanager
async def write_pair(rig: Rig) -> AsyncIterator[WritePair]:
    """Fresh evstate stores and raw producers, all started, topics created."""
    client = EvstateClient(rig.settings(unique_name("bench-write")))
    plain = EvstateClient(rig.settings(unique_name("bench-plain"), history=False))
    partitions = client.settings.partitions
    raw_topic, raw_history = unique_name("bench-raw"), unique_name("bench-raw-history")
    await create_topic_like_evstate(rig.bootstrap, raw_topic, partitions)
    await create_topic_like_evstate(rig.bootstrap, raw_history, partitions, HISTORY_TOPIC_CONFIGS)
    states = [resource_state(SCOPE, i) for i in range(rig.plan.writes)]
    records = [raw_record(SCOPE, serialize_state(SCOPE, s), partitions) for s in states]
    producer, txn = raw_producer(rig.bootstrap), raw_transactional_producer(rig.bootstrap)
    async with client, plain:
        store, store_plain = client.store(SCOPE), plain.store(SCOPE)
        await store.init()
        await store_plain.init()
        await producer.start()
        await txn.start()
        try:
            yield WritePair(
                store,
                store_plain,
                producer,
                txn,
                raw_topic,
                raw_history,
                partitions,
                states,
                records,
            )
        finally:
            await txn.stop()
            await producer.stop()


async def compare_writes(rig: Rig) -> list[Row]:
    """1 and 2: send_and_wait vs set; produce→consume vs set then get."""
    async with write_pair(rig) as pair:
        return [*await _send_vs_set(rig, pair), *await _roundtrips(rig, pair)]


async def _send_vs_set(rig: Rig, pair: WritePair) -> list[Row]:
    async def raw() -> list[float]:
        return [await timed(_send_and_wait(pair.producer, pair.raw_topic, r)) for r in pair.records]

    async def raw_tailed() -> list[float]:
        async with tailing(rig.bootstrap, pair.raw_topic, pair.partitions):
            return await raw()

    async def raw_txn() -> list[float]:
        return [await timed(_transact(pair, r)) for r in pair.records]

    async def ev() -> list[float]:
        return [await timed(pair.store.set(s.id, s)) for s in pair.states]

    async def ev_plain() -> list[float]:
        return [await timed(pair.store_plain.set(s.id, s)) for s in pair.states]

    measures = {
        "raw": raw,
        "raw_tailed": raw_tailed,
        "raw_txn": raw_txn,
        "evstate": ev,
        "evstate_plain": ev_plain,
    }
    await interleave(1, **measures)  # warm-up
    got = await interleave(rig.plan.rounds, **measures)
    p50 = {name: percentiles(samples)[50] * MS for name, samples in got.items()}
    return [
        *latency_rows("set vs send_and_wait", got["raw"], got["evstate"], MS, at_most(4)),
        Row(
            "set vs transaction (state+history) p50",
            p50["raw_txn"],
            p50["evstate"],
            "ms",
            note="raw writes the state and history records in one Kafka transaction, as "
            "evstate's default (history on) does",
        ),
        Row("set, history off vs send_and_wait p50", p50["raw"], p50["evstate_plain"], "ms"),
        Row(
            "set, history off vs send_and_wait, tailed p50",
            p50["raw_tailed"],
            p50["evstate_plain"],
            "ms",
            note="raw also runs a consumer tailing its topic in the same event loop, "
            "as evstate's view applier does",
        ),
    ]


async def _transact(pair: WritePair, r: RawRecord, *, history: bool = True) -> None:
    """The raw side of a ``set``: the state record, and by default its history record,
    in one transaction (with history off, evstate's transaction holds the state record
    only: the partition's transactional id is what fences other writers)."""
    topics = (pair.raw_topic, pair.raw_history) if history else (pair.raw_topic,)
    async with pair.txn.transaction():
        sent = [
            await pair.txn.send(topic, r.value, key=r.key, partition=r.partition, headers=r.headers)
            for topic in topics
        ]
        await asyncio.gather(*sent)


async def _roundtrips(rig: Rig, pair: WritePair) -> list[Row]:
    consumer = await tail_consumer(rig.bootstrap, pair.raw_topic, pair.partitions)
    try:

        async def raw() -> list[float]:
            return [
                await _produce_consume(pair.producer, consumer, pair.raw_topic, r)
                for r in pair.records
            ]

        async def raw_txn() -> list[float]:
            return [await _transact_consume(pair, consumer, r) for r in pair.records]

        async def raw_txn_state() -> list[float]:
            return [await _transact_consume(pair, consumer, r, history=False) for r in pair.records]

        async def ev() -> list[float]:
            return [await timed(_set_get(pair.store, s)) for s in pair.states]

        async def ev_plain() -> list[float]:
            return [await timed(_set_get(pair.store_plain, s)) for s in pair.states]

        measures = {
            "raw": raw,
            "raw_txn": raw_txn,
            "raw_txn_state": raw_txn_state,
            "evstate": ev,
            "evstate_plain": ev_plain,
        }
        await interleave(1, **measures)  # warm-up
        got = await interleave(rig.plan.rounds, **measures)
    finally:
        await consumer.stop()
    p50 = {name: percentiles(samples)[50] * MS for name, samples in got.items()}
    return [
        *latency_rows("set+get vs produce→consume", got["raw"], got["evstate"], MS, None),
        Row(
            "set+get vs transaction→consume p50",
            p50["raw_txn"],
            p50["evstate"],
            "ms",
            goal=at_most(1.2),
        ),
        Row(
            "set+get, history off vs produce→consume p50",
            p50["raw"],
            p50["evstate_plain"],
            "ms",
            goal=at_most(1.5),
        ),
        Row(
            "set+get, history off vs transaction (state record)→consume p50",
            p50["raw_txn_state"],
            p50["evstate_plain"],
            "ms",
            note="like for like: with history off evstate still writes in a transaction "
            "(one record), since the partition's transactional id fences other writers",
        ),
    ]


async def _transact_consume(
    pair: WritePair, consumer: AIOKafkaConsumer, r: RawRecord, *, history: bool = True
) -> float:
    """Seconds from a transaction's start until a read_committed consumer has its record."""
    start = time.perf_counter()
    await _transact(pair, r, history=history)
    got = await consumer.getone()
    took = time.perf_counter() - start
    if got.key != r.key:
        raise AssertionError(f"raw consumer got {got.key!r}, expected {r.key!r}")
    return took


def _send(producer: AIOKafkaProducer, topic: str, r: RawRecord) -> Any:
    return producer.send(topic, r.value, key=r.key, partition=r.partition, headers=r.headers)


def _send_and_wait(producer: AIOKafkaProducer, topic: str, r: RawRecord) -> Any:
    return producer.send_and_wait(
        topic, r.value, key=r.key, partition=r.partition, headers=r.headers
    )


async def _set_get(store: KafkaStateStore, state: State) -> None:
    await store.set(state.id, state)
    if await store.get(state.id) is None:
        raise AssertionError(f"read-your-write lost {state.id}")


async def _produce_consume(
    producer: AIOKafkaProducer, consumer: AIOKafkaConsumer, topic: str, r: RawRecord
) -> float:
    """Seconds from send until the consumer hands over the record (the ack is awaited after)."""
    start = time.perf_counter()
    delivery = await _send(producer, topic, r)
    got = await consumer.getone()
    took = time.perf_counter() - start
    sent = await delivery
    if (got.partition, got.offset) != (sent.partition, sent.offset):
        raise AssertionError(f"raw consumer got {got.offset}, expected {sent.offset}")
    return took


async def compare_reads(rig: Rig) -> list[Row]:
    """3: Rdict.get + Avro decode vs store.get of an applied key (session and eventual)."""
    plan = rig.plan
    client = EvstateClient(rig.settings(unique_name("bench-read")))
    partitions = client.settings.partitions
    states = [resource_state(SCOPE, i) for i in range(KEYS_PER_SCOPE)]
    records = [raw_record(SCOPE, serialize_state(SCOPE, s), partitions) for s in states]
    raw_db = Rdict(str(rig.tmp / "raw-get"), Options(raw_mode=True))
    for r in records:
        raw_db[r.key] = r.value
    schema = load_avro_schema()
    rng = random.Random(3)
    async with client:
        store = client.store(SCOPE)
        await asyncio.gather(*(store.set(s.id, s) for s in states))
        await client.catch_up()
        picks = [rng.randrange(len(states)) for _ in range(plan.gets)]
        ids = [states[i].id for i in picks]
        raw_keys = [records[i].key for i in picks]

        def raw_get(with_json: bool) -> Any:
            async def measure() -> list[float]:
                return _raw_gets(raw_db, schema, raw_keys, with_json)

            return measure

        def ev_get(consistency: Any) -> Any:
            async def measure() -> list[float]:
                return [await timed(store.get(i, consistency=consistency)) for i in ids]

            return measure

        measures = {
            "raw": raw_get(False),
            "raw_json": raw_get(True),
            "session": ev_get("session"),
            "eventual": ev_get("eventual"),
        }
        await interleave(1, **measures)  # warm-up
        got = await interleave(plan.rounds, **measures)
    raw_db.close()
    Rdict.destroy(str(rig.tmp / "raw-get"))
    raw, raw_json = percentiles(got["raw"]), percentiles(got["raw_json"])
    session, eventual = percentiles(got["session"]), percentiles(got["eventual"])
    what = "vs Rdict.get+Avro decode"
    return [
        Row(f"get {what} p50", raw[50] * US, session[50] * US, "µs", goal=at_most(1.3)),
        Row(f"get {what} p99", raw[99] * US, session[99] * US, "µs"),
        Row(f"get eventual {what} p50", raw[50] * US, eventual[50] * US, "µs"),
        Row(f"get eventual {what} p99", raw[99] * US, eventual[99] * US, "µs"),
        Row(
            "get vs Rdict.get+Avro decode+json.loads p50",
            raw_json[50] * US,
            session[50] * US,
            "µs",
            note="raw also parses the state's JSON text, as any real reader must",
        ),
    ]


def _raw_gets(db: Rdict, schema: Any, keys_: list[bytes], with_json: bool) -> list[float]:
    clock = time.perf_counter
    reader = fastavro.schemaless_reader
    samples = []
    for key in keys_:
        start = clock()
        event = reader(io.BytesIO(db.get(key)), schema, None)
        if with_json:
            json.loads(event["state"])
        samples.append(clock() - start)
    return samples


async def compare_rebuild(rig: Rig) -> list[Row]:
    """4: consume + WriteBatch vs client.rebuild(), on the same topic, in events/s."""
    plan = rig.plan
    client = EvstateClient(rig.settings(unique_name("bench-rebuild"), read_timeout=600.0))
    partitions = client.settings.partitions
    topic = client.settings.state_topic
    async with client:
        await client.ensure_topics()
        await bulk_load(rig.bootstrap, topic, scale_records(plan.rebuild_events, partitions))
        await client.catch_up()
        rounds = 0

        async def raw() -> list[float]:
            nonlocal rounds
            rounds += 1
            db_dir = rig.tmp / f"raw-rebuild-{rounds}"
            start = time.perf_counter()
            read = await raw_rebuild(rig.bootstrap, topic, partitions, db_dir)
            return [read / (time.perf_counter() - start)]

        async def ev() -> list[float]:
            start = time.perf_counter()
            read = await client.rebuild()
            return [read / (time.perf_counter() - start)]

        got = await interleave(plan.rebuild_rounds, raw=raw, evstate=ev)
    raw_rate, ev_rate = percentiles(got["raw"])[50], percentiles(got["evstate"])[50]
    return [
        Row(
            f"rebuild() vs consume+WriteBatch ({plan.rebuild_events:,} events)",
            raw_rate,
            ev_rate,
            "events/s",
            goal=at_least(0.5),
            higher_is_better=True,
        ),
    ]


async def _cold_reads(rig: Rig, prefix: str, keys_: int) -> Row:
    """A fresh process's first read of one scope vs its full catch-up, on an empty view.

    Both sides open a new client on an empty view dir of the same topic: one reads the
    count of one scope (its partition is fetched first, the others wait), the other waits
    for the whole view (``catch_up``). Time from ``start`` to the answer.
    """
    plan = rig.plan
    rounds = 0

    async def cold_start(job: str) -> list[float]:
        nonlocal rounds
        rounds += 1
        settings = rig.settings(prefix, read_timeout=600.0)
        settings = dataclasses.replace(settings, view_dir=str(rig.tmp / f"cold-{rounds}"))
        start = time.perf_counter()
        async with EvstateClient(settings) as client:
            if job == "one scope":
                assert await client.store(scale_scope(0)).count() == KEYS_PER_SCOPE
            else:
                await client.catch_up()
            return [time.perf_counter() - start]

    async def full() -> list[float]:
        return await cold_start("all")

    async def one() -> list[float]:
        return await cold_start("one scope")

    got = await interleave(plan.rebuild_rounds, raw=full, evstate=one)
    return Row(
        f"first read of one scope vs full catch-up, empty view ({keys_:,} keys)",
        percentiles(got["raw"])[50] * 1000,
        percentiles(got["evstate"])[50] * 1000,
        "ms",
        goal=at_most(1 / 6),
        note="raw column: a fresh client's catch_up() of the whole view (the old wait); "
        "evstate column: its first count() of one scope, whose partition is fetched first",
    )


async def compare_scale(rig: Rig) -> list[Row]:
    """5: store.get in a view of ``small`` keys vs one of ``large`` keys."""
    plan = rig.plan
    views = {"small": plan.small, "large": plan.large}
    clients = {
        size: EvstateClient(rig.settings(unique_name(f"bench-{size}"), read_timeout=1800.0))
        for size in views
    }
    rng = random.Random(5)
    measures = {}
    for size, count in views.items():
        client = clients[size]
        await client.ensure_topics()
        start = time.perf_counter()
        records = scale_records(count, client.settings.partitions)
        await bulk_load(rig.bootstrap, client.settings.state_topic, records)
        await client.catch_up()
        note(f"{count:,} keys loaded and applied in {time.perf_counter() - start:.1f} s")
        measures[size] = _random_gets(client, count, plan.scale_gets, rng)
    try:
        await interleave(1, **measures)  # warm-up
        got = await interleave(plan.rounds, **measures)
        cold = await _cold_reads(rig, clients["large"].settings.topic_prefix, plan.large)
    finally:
        for client in clients.values():
            await close_client(client)
    small, large = percentiles(got["small"]), percentiles(got["large"])
    small_label, large_label = _count_label(plan.small), _count_label(plan.large)
    about = f"raw column: get in a view of {small_label} keys; evstate column: of {large_label}"
    if plan.large != 1_000_000:
        about += " (1M reduced by --quick)"
    what = f"get at {large_label} keys vs {small_label}"
    return [
        Row(f"{what} p50", small[50] * US, large[50] * US, "µs", goal=at_most(1.2), note=about),
        Row(f"{what} p99", small[99] * US, large[99] * US, "µs"),
        cold,
    ]


async def close_client(client: EvstateClient) -> None:
    """Close ``client``, surviving a cancellation that aiokafka leaks on close.

    aiokafka's ``Fetcher.close`` re-raises the cancellation of a fetch task that was backing
    off after a failed fetch (e.g. a request timeout while the broker compacts 1M records),
    and evstate's ``Tail.stop`` lets it through: the measurements are done by then, so
    report it and keep them.
    """
    try:
        await client.close()
    except asyncio.CancelledError:
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            raise
        note("evstate's client.close() raised CancelledError (aiokafka fetcher close leak)")


def _count_label(n: int) -> str:
    return f"{n / 10**6:g}M" if n >= 10**6 else f"{n / 1000:g}k"


def _random_gets(client: EvstateClient, count: int, n: int, rng: random.Random) -> Any:
    """A measure: ``n`` gets of random existing keys, each timed."""
    stores = [client.store(scale_scope(j)) for j in range(-(-count // KEYS_PER_SCOPE))]
    picks = [rng.randrange(count) for _ in range(n)]
    targets = [(stores[k // KEYS_PER_SCOPE], scale_key(k % KEYS_PER_SCOPE)) for k in picks]

    async def measure() -> list[float]:
        samples = []
        for store, key in targets:
            samples.append(await timed(store.get(key)))
        return samples

    return measure


# -- main ------------------------------------------------------------------------------


async def run(plan: Plan, broker: BrokerInfo) -> list[Row]:
    """Every comparison, in turn, in a scratch dir removed afterwards."""
    tmp = Path(tempfile.mkdtemp(prefix="evstate-bench-"))
    rig = Rig(broker.bootstrap_servers, tmp, plan)
    try:
        return await run_steps((compare_writes, compare_reads, compare_rebuild, compare_scale), rig)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


async def main() -> int:
    """Parse the command line, get a broker, run, print the report."""
    args = base_parser(__doc__.splitlines()[0]).parse_args()
    plan = QUICK if args.quick else FULL
    async with broker_for(args.bootstrap) as broker:
        rows = await run(plan, broker)
    print_report(f"evstate store vs raw clients ({plan.label} mode)", rows, broker)
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
