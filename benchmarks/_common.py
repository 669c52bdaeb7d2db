"""What every benchmark shares: percentiles, interleaved rounds, a broker, the report,
and the raw baselines' building blocks (a realistic state, genuine evstate records, plain
aiokafka producers and consumers configured as evstate's).

A benchmark measures a raw baseline (aiokafka, rocksdict, fastavro used directly) and
evstate side by side in one run, alternating the two so background load on a shared
machine hits both alike, and reports the ratio evstate / raw against a goal::

    async with broker_for(args.bootstrap) as broker:
        samples = await interleave(rounds, raw=measure_raw, evstate=measure_evstate)
        raw, ev = percentiles(samples["raw"]), percentiles(samples["evstate"])
        rows = [Row("get p50", raw[50], ev[50], "µs", goal=at_most(1.3))]
    print_report("bench_store", rows, broker)

Absolute numbers are noise on a shared 2-core machine; the ratios are the result.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.metadata
import json
import math
import os
import platform
import shlex
import socket
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import aiokafka.producer.sender as ksender
import fastavro
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from rich.console import Console
from rich.table import Table

import evstate
from evstate import ChangeEvent, Scope, State, events, keys
from evstate.broker import KAFKA_VERSION, LocalBroker
from evstate.config import Settings
from evstate.kafka import (
    BATCH_BYTES,  # the raw producers batch as evstate does
    Admin,
    TopicSpec,
)

RigT = TypeVar("RigT")

__all__ = [
    "CONSUMER_CONFIG",
    "HISTORY_TOPIC_CONFIGS",
    "TIMES",
    "BrokerInfo",
    "Goal",
    "LoadSampler",
    "Measure",
    "RawRecord",
    "RequestClock",
    "Row",
    "at_least",
    "at_most",
    "base_parser",
    "broker_for",
    "bulk_load",
    "count_records",
    "create_topic_like_evstate",
    "free_port_block",
    "interleave",
    "load_avro_schema",
    "note",
    "percentiles",
    "print_report",
    "raw_producer",
    "raw_record",
    "raw_transactional_producer",
    "resource_state",
    "row_json",
    "run_steps",
    "tail_consumer",
    "tailing",
    "timed",
    "unique_name",
    "write_report_json",
]

# -- statistics -----------------------------------------------------------------------


def percentiles(samples: Sequence[float], qs: Iterable[float] = (50, 99)) -> dict[float, float]:
    """The ``qs`` percentiles of ``samples``, linearly interpolated between ranks.

    Raises:
        ValueError: ``samples`` is empty.
    """
    if not samples:
        raise ValueError("no samples")
    ordered = sorted(samples)
    top = len(ordered) - 1
    out: dict[float, float] = {}
    for q in qs:
        rank = q / 100 * top
        low, high = math.floor(rank), math.ceil(rank)
        out[q] = ordered[low] + (ordered[high] - ordered[low]) * (rank - low)
    return out


async def timed(op: Awaitable[object]) -> float:
    """Await ``op``; how long it took, in seconds."""
    start = time.perf_counter()
    await op
    return time.perf_counter() - start


Measure = Callable[[], Awaitable[list[float]]]
"""One round of a measurement: returns that round's samples."""


async def interleave(rounds: int, **measures: Measure) -> dict[str, list[float]]:
    """Run every measure once per round, flipping the order each round (AB BA AB ...).

    Returns:
        Each measure's samples from all rounds, by the keyword it was passed as.
    """
    names = list(measures)
    samples: dict[str, list[float]] = {name: [] for name in names}
    for i in range(rounds):
        for name in names if i % 2 == 0 else reversed(names):
            samples[name].extend(await measures[name]())
    return samples


TIMES = "\u00d7"  # the multiplication sign, spelled out for linters
_MIN_WIDTH = 132

# -- the report ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Goal:
    """A bound on the ratio evstate / raw, e.g. ``at_most(1.2)``."""

    limit: float
    upper: bool  # True: ratio <= limit; False: ratio >= limit

    def __call__(self, ratio: float) -> bool:
        """Whether ``ratio`` meets the goal."""
        return ratio <= self.limit if self.upper else ratio >= self.limit

    def __str__(self) -> str:
        return f"{'≤' if self.upper else '≥'} {self.limit:g}{TIMES}"


def at_most(limit: float) -> Goal:
    """Goal: evstate / raw must be at most ``limit`` (times, latencies)."""
    return Goal(limit, upper=True)


def at_least(limit: float) -> Goal:
    """Goal: evstate / raw must be at least ``limit`` (throughputs)."""
    return Goal(limit, upper=False)


@dataclass(frozen=True, slots=True)
class Row:
    """One line of the report: a baseline, evstate's number, and their ratio.

    Attributes:
        name: what was measured.
        raw: the baseline's value, in ``unit``.
        evstate: evstate's value, in ``unit``.
        unit: e.g. ``"ms"``, ``"µs"``, ``"events/s"``.
        goal: called with the ratio evstate / raw; None for an informational row.
        higher_is_better: True for throughputs (colours the ratio accordingly).
        note: a footnote, e.g. what the raw column holds when it is not a raw client.
    """

    name: str
    raw: float
    evstate: float
    unit: str
    goal: Callable[[float], bool] | None = None
    higher_is_better: bool = False
    note: str = ""

    @property
    def ratio(self) -> float:
        """evstate / raw (inf when raw is 0)."""
        return self.evstate / self.raw if self.raw else math.inf

    @property
    def met(self) -> bool | None:
        """Whether the goal is met; None without a goal."""
        return None if self.goal is None else bool(self.goal(self.ratio))


def _number(value: float) -> str:
    if value >= 1000:
        return f"{value:,.0f}"
    return f"{value:.3g}" if value >= 1 else f"{value:.3f}"


def _ratio_style(row: Row) -> str:
    better = row.ratio > 1 if row.higher_is_better else row.ratio < 1
    return "green" if better else "yellow" if row.met is not False else "red"


def _table(title: str, rows: Sequence[Row]) -> Table:
    table = Table(title=title, title_justify="left")
    table.add_column("measurement")
    for column in ("raw", "evstate", "ratio"):
        table.add_column(column, justify="right")
    table.add_column("goal", justify="center")
    table.add_column("met?", justify="center")
    notes: list[str] = []
    for row in rows:
        name = row.name
        if row.note:
            notes.append(row.note)
            name += f" [{len(notes)}]"
        met = {None: "—", True: "[green]yes[/]", False: "[red]NO[/]"}[row.met]
        table.add_row(
            name,
            f"{_number(row.raw)} {row.unit}",
            f"{_number(row.evstate)} {row.unit}",
            f"[{_ratio_style(row)}]{row.ratio:.2f}{TIMES}[/]",
            str(row.goal) if row.goal is not None else "—",
            met,
        )
    if notes:
        table.caption = "  ".join(f"[{i}] {n}" for i, n in enumerate(notes, 1))
        table.caption_justify = "left"
    return table


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "?"


def machine_facts(broker: BrokerInfo) -> list[tuple[str, str]]:
    """What a reader needs to judge the numbers: machine, interpreter, libraries, broker."""
    libs = ", ".join(f"{d} {_version(d)}" for d in ("evstate", "aiokafka", "rocksdict", "fastavro"))
    return [
        ("command", shlex.join([os.path.basename(sys.executable), *sys.argv])),
        ("cpus", f"{os.cpu_count()} ({platform.machine()}, {platform.platform()})"),
        ("python", f"{platform.python_implementation()} {platform.python_version()}"),
        ("libraries", libs),
        ("kafka", f"{broker.kafka_version} at {broker.bootstrap_servers} ({broker.origin})"),
    ]


def _console() -> Console:
    """A console wide enough for the table, even when output goes to a file or pipe."""
    console = Console()
    return console if console.width >= _MIN_WIDTH else Console(width=_MIN_WIDTH)


def print_report(
    title: str,
    rows: Sequence[Row],
    broker: BrokerInfo,
    console: Console | None = None,
    *,
    json_path: str | None = None,
    extra: dict[str, Any] | None = None,
    to_win: Callable[[Row], str | None] | None = None,
) -> bool:
    """Print the machine facts and the table of ``rows``; with ``--json PATH`` (see
    :func:`base_parser`) or ``json_path``, also write them there (:func:`write_report_json`).

    Returns:
        Whether every row with a goal met it.
    """
    console = console or _console()
    console.print()
    for name, value in machine_facts(broker):
        console.print(f"[bold]{name:>9}[/]  {value}", highlight=False)
    console.print(_table(title, rows))
    missed = [r.name for r in rows if r.met is False]
    if missed:
        console.print(f"[red]goals not met:[/] {', '.join(missed)}")
    else:
        console.print("[green]every goal met[/]")
    path = json_path or _BenchParser.json_path
    if path:
        write_report_json(path, title, rows, broker, extra=extra, to_win=to_win)
    return not missed


def _ahead(row: Row) -> bool:
    return row.ratio > 1 if row.higher_is_better else row.ratio < 1


def row_json(row: Row, to_win: str | None = None) -> dict[str, Any]:
    """``row`` as JSON: the figures, the ratio, the goal, whether evstate is ahead, and
    ``to_win`` (what it would take evstate to win) where it is not."""
    ahead = _ahead(row)
    return {
        "name": row.name,
        "baseline": row.raw,
        "evstate": row.evstate,
        "unit": row.unit,
        "ratio": row.ratio,
        "goal": str(row.goal) if row.goal is not None else None,
        "met": row.met,
        "higher_is_better": row.higher_is_better,
        "evstate_ahead": ahead,
        "note": row.note,
        "to_win": None if ahead else to_win,
    }


def write_report_json(
    path: str,
    title: str,
    rows: Sequence[Row],
    broker: BrokerInfo,
    *,
    extra: dict[str, Any] | None = None,
    to_win: Callable[[Row], str | None] | None = None,
) -> None:
    """Write the report to ``path`` as JSON, for benchmarks/report.py: the benchmark's name,
    the title, the machine facts, the load average now, every row, and ``extra``."""
    doc = {
        "bench": Path(sys.argv[0]).stem,
        "title": title,
        "facts": dict(machine_facts(broker)),
        "loadavg": os.getloadavg(),
        "rows": [row_json(r, to_win(r) if to_win else None) for r in rows],
        **(extra or {}),
    }
    Path(path).write_text(json.dumps(doc, indent=2, default=str) + "\n")


class LoadSampler:
    """The 1-minute load average, sampled every few seconds while a benchmark runs::

    with LoadSampler() as load:
        ...
    load.summary()  # {"min": ..., "median": ..., "max": ...}
    """

    def __init__(self, every: float = 5.0) -> None:
        self.samples: list[float] = []
        self._every = every
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        while True:
            self.samples.append(os.getloadavg()[0])
            await asyncio.sleep(self._every)

    def __enter__(self) -> LoadSampler:
        self._task = asyncio.create_task(self._run())
        return self

    def __exit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
        self.samples.append(os.getloadavg()[0])

    def summary(self) -> dict[str, float]:
        """min, median and max of the samples."""
        s = self.samples or [os.getloadavg()[0]]
        return {"min": min(s), "median": percentiles(s)[50], "max": max(s)}


# -- the broker ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class BrokerInfo:
    """The broker a benchmark runs against."""

    bootstrap_servers: str
    kafka_version: str
    origin: str  # "started for this run" or where the address came from


def free_port_block(count: int) -> int:
    """A first port such that ``count`` consecutive loopback ports are free right now."""
    for _ in range(200):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            base = probe.getsockname()[1]
        if base + count > 65000:
            continue
        if all(_port_free(port) for port in range(base, base + count)):
            return base
    raise RuntimeError(f"no block of {count} free ports on 127.0.0.1")


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


@contextlib.asynccontextmanager
async def broker_for(bootstrap: str | None) -> AsyncIterator[BrokerInfo]:
    """The broker to measure against: ``bootstrap``, else ``EVSTATE_BOOTSTRAP_SERVERS``,
    else a single-node :class:`LocalBroker` started in a temp dir and stopped on exit.
    """
    if bootstrap:
        yield BrokerInfo(bootstrap, "unknown (not started here)", "--bootstrap")
        return
    given = os.environ.get("EVSTATE_BOOTSTRAP_SERVERS")
    if given:
        yield BrokerInfo(given, "unknown (not started here)", "EVSTATE_BOOTSTRAP_SERVERS")
        return
    with tempfile.TemporaryDirectory(prefix="evstate-bench-broker-") as data_dir:
        # A 1M-key topic is more than the default 512 MB heap likes while it compacts.
        broker = LocalBroker(data_dir, port=free_port_block(2), heap="1g")
        print(f"starting a Kafka {KAFKA_VERSION} broker in {data_dir} ...", file=sys.stderr)
        servers = await asyncio.to_thread(broker.start)
        try:
            yield BrokerInfo(servers, KAFKA_VERSION, "started for this run")
        except BaseException:
            _print_broker_logs(broker)  # the dir is about to go: keep what explains a failure
            raise
        finally:
            await asyncio.to_thread(broker.stop)


def _print_broker_logs(broker: LocalBroker, lines: int = 15) -> None:
    state = broker.load()
    for node in state.nodes if state is not None else []:
        try:
            tail = node.log_file.read_text(errors="replace").splitlines()[-lines:]
        except OSError:
            continue
        print(f"--- the end of {node.log_file}", *tail, sep="\n", file=sys.stderr)


# -- raw baselines: realistic data and plain aiokafka ----------------------------------

# Matches evstate's Tail, so both sides fetch alike.
CONSUMER_CONFIG: dict[str, Any] = {
    "group_id": None,
    "enable_auto_commit": False,
    "isolation_level": "read_committed",
    "fetch_max_wait_ms": 100,
    "max_partition_fetch_bytes": 4 * 1024 * 1024,
}


def resource_state(scope: Scope, i: int) -> State:
    """An Alchemy ``aws::lambda::Function`` as it looks once created (~1.5 KB of JSON)."""
    rid = f"fn-{i:07d}"
    name = f"billing-api-prod-{rid}"
    role = f"arn:aws:iam::123456789012:role/{name}-exec"
    arn = f"arn:aws:lambda:eu-west-1:123456789012:function:{name}"
    props = {
        "functionName": name,
        "runtime": "nodejs20.x",
        "handler": "dist/index.handler",
        "memorySize": 1024,
        "timeout": 30,
        "architectures": ["arm64"],
        "roleArn": role,
        "description": "Invoice rendering and webhook fan-out for the billing API",
        "environment": {
            "NODE_ENV": "production",
            "TABLE_NAME": "billing-prod-invoices",
            "QUEUE_URL": "https://sqs.eu-west-1.amazonaws.com/123456789012/billing-prod-events",
            "LOG_LEVEL": "info",
        },
        "layers": [f"arn:aws:lambda:eu-west-1:123456789012:layer:otel-collector:{7 + i % 3}"],
        "tags": {"app": "billing-api", "stage": "prod", "owner": "payments-team"},
        "url": {"authType": "AWS_IAM", "cors": {"allowOrigins": ["https://app.example.com"]}},
    }
    output = {
        "arn": arn,
        "functionName": name,
        "qualifiedArn": f"{arn}:{3 + i % 5}",
        "invokeArn": f"arn:aws:apigateway:eu-west-1:lambda:path/2015-03-31/functions/{arn}"
        "/invocations",
        "version": str(3 + i % 5),
        "roleArn": role,
        "functionUrl": f"https://{i:07d}abcdefghijklmnopqrstuv.lambda-url.eu-west-1.on.aws/",
        "codeSha256": "kX3VHZ0a2lWJ2vUOV8KfRkY3YbGG1sP6wq5zj0O8RZo=",
        "codeSize": 184_320 + i,
        "lastModified": "2025-03-14T09:26:53.589+0000",
        "revisionId": f"7a2c5f0e-{i:04x}-4b1d-9e7a-5d3c2b1a0f9e",
        "state": "Active",
        "logGroup": f"/aws/lambda/{name}",
    }
    return State(
        status="created",
        kind="aws::lambda::Function",
        id=rid,
        fqn=f"{scope.path}/{rid}",
        seq=i,
        data={},
        props=props,
        output=output,
    )


@dataclass(frozen=True, slots=True)
class RawRecord:
    """A genuine evstate event as bytes: what a raw client sends or stores."""

    partition: int
    key: bytes
    value: bytes
    headers: list[tuple[str, bytes]]


def raw_record(scope: Scope, tree: dict[str, Any], partitions: int, version: int = 1) -> RawRecord:
    """The state-topic record evstate would write for a serialized state ``tree``."""
    event = ChangeEvent.new(
        op="SET", scope=scope, key=tree["id"], state=tree, version=version, actor="bench"
    )
    value, headers = events.state_record(event)
    assert value is not None
    return RawRecord(
        keys.partition_for(scope, partitions),
        keys.record_key(scope, event.key).encode(),
        value,
        headers,
    )


STATE_TOPIC_CONFIGS = {"cleanup.policy": "compact"}
HISTORY_TOPIC_CONFIGS = {"cleanup.policy": "delete", "retention.ms": "-1"}


async def create_topic_like_evstate(
    bootstrap: str, name: str, partitions: int, configs: dict[str, str] | None = None
) -> None:
    """A topic configured as evstate makes its own: by default its compacted state topic.

    Made by evstate's own admin, which returns once every partition's leader serves it:
    a raw consumer started at once would otherwise meet NOT_LEADER and log it.
    """
    admin = Admin(Settings(bootstrap_servers=bootstrap))
    await admin.start()
    try:
        spec = TopicSpec(name, partitions, None, dict(configs or STATE_TOPIC_CONFIGS))
        await admin.ensure_topic(spec)
    finally:
        await admin.stop()


def raw_producer(bootstrap: str) -> AIOKafkaProducer:
    """A producer configured as evstate's idempotent one (``history=False``)."""
    return AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        acks="all",
        enable_idempotence=True,
        linger_ms=0,
        max_batch_size=BATCH_BYTES,
    )


def raw_transactional_producer(bootstrap: str) -> AIOKafkaProducer:
    """A producer configured as evstate's transactional one (the default, history on).

    Like evstate's, it retries a first add-partitions refused while the previous commit's
    markers are written (KAFKA-5477) after 1 ms, not aiokafka's 20 (a module constant in
    aiokafka, process-wide: set here so the baseline does not depend on who ran first).
    """
    ksender.BACKOFF_OVERRIDE = 0.001
    return AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        transactional_id=unique_name("bench-txn"),
        linger_ms=0,
        retry_backoff_ms=5,  # as evstate: the 100 ms default would dominate small transactions
        max_batch_size=BATCH_BYTES,
    )


class RequestClock:
    """Times the requests aiokafka's producers send, by producer and kind (instrumentation).

    While :meth:`running`, every add-partitions, produce and end-transaction request (each
    try, retries included) is timed from send to handled response, keyed by the
    producer's transactional id, and :meth:`window` times the operations being studied:
    where a transaction's time goes, on the client's side of the wire. A request partly
    or wholly outside every window (evstate adds the next transaction's partitions
    between writes) counts only for the part inside one. Benchmark-only: it wraps
    aiokafka's request handler for the duration.
    """

    KINDS: ClassVar[dict[str, str]] = {
        "AddPartitionsToTxnHandler": "add-partitions",
        "SendProduceReqHandler": "produce",
        "EndTxnHandler": "end-transaction",
    }

    def __init__(self) -> None:
        self.times: dict[tuple[str | None, str], list[tuple[float, float]]] = {}
        self.windows: dict[str, list[tuple[float, float]]] = {}

    def clear(self) -> None:
        self.times.clear()
        self.windows.clear()

    async def window(self, side: str, op: Awaitable[object]) -> float:
        """Await ``op`` as one of ``side``'s operations; how long it took, in seconds."""
        start = time.perf_counter()
        await op
        end = time.perf_counter()
        self.windows.setdefault(side, []).append((start, end))
        return end - start

    def of(self, tid_prefix: str, kind: str) -> list[tuple[float, float]]:
        """The (start, end) of ``kind`` requests of producers whose id starts so."""
        return [
            span
            for (tid, k), spans in self.times.items()
            if k == kind and tid is not None and tid.startswith(tid_prefix)
            for span in spans
        ]

    def inside(self, side: str, tid_prefix: str, kind: str) -> float:
        """Seconds ``kind`` requests of those producers spent inside ``side``'s windows."""
        windows = sorted(self.windows.get(side, []))
        total = 0.0
        for start, end in self.of(tid_prefix, kind):
            for w_start, w_end in windows:
                if w_start >= end:
                    break
                total += max(0.0, min(end, w_end) - max(start, w_start))
        return total

    @contextlib.contextmanager
    def running(self) -> Iterator[RequestClock]:
        handlers = [getattr(ksender, name) for name in self.KINDS]
        originals = [h.__dict__.get("do") for h in handlers]
        base_do = ksender.BaseHandler.do
        times = self.times

        def timed_do(cls: Any, kind: str) -> Any:
            inner = cls.__dict__.get("do") or base_do

            async def do(handler: Any, node_id: int) -> Any:
                started = time.perf_counter()
                try:
                    return await inner(handler, node_id)
                finally:
                    txn = handler._sender._txn_manager
                    tid = txn.transactional_id if txn is not None else None
                    times.setdefault((tid, kind), []).append((started, time.perf_counter()))

            return do

        for cls, (name, kind) in zip(handlers, self.KINDS.items(), strict=True):
            assert cls.__name__ == name
            cls.do = timed_do(cls, kind)
        try:
            yield self
        finally:
            for cls, original in zip(handlers, originals, strict=True):
                if original is None:
                    del cls.do
                else:
                    cls.do = original


async def tail_consumer(bootstrap: str, topic: str, partitions: int) -> AIOKafkaConsumer:
    """A started consumer, assigned every partition of ``topic``, positioned at its end."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, **CONSUMER_CONFIG)
    await consumer.start()
    consumer.assign([TopicPartition(topic, p) for p in range(partitions)])
    await consumer.seek_to_end()
    return consumer


async def bulk_load(bootstrap: str, topic: str, records: Iterator[RawRecord]) -> int:
    """Produce ``records`` in 1 MB batches, as fast as the broker takes them."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks=1, max_batch_size=1_000_000)
    await producer.start()
    open_batches: dict[int, Any] = {}
    sent = []
    count = 0
    try:
        for r in records:
            batch = open_batches.get(r.partition) or producer.create_batch()
            if batch.append(key=r.key, value=r.value, timestamp=None, headers=r.headers) is None:
                sent.append(await producer.send_batch(batch, topic, partition=r.partition))
                batch = producer.create_batch()
                batch.append(key=r.key, value=r.value, timestamp=None, headers=r.headers)
            open_batches[r.partition] = batch
            count += 1
        for partition, batch in open_batches.items():
            sent.append(await producer.send_batch(batch, topic, partition=partition))
        await asyncio.gather(*sent)
    finally:
        await producer.stop()
    return count


async def count_records(bootstrap: str, topic: str, partitions: int) -> int:
    """How many committed records ``topic`` holds now (after compaction, if any), read
    from the start of every partition up to its last stable offset."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, **CONSUMER_CONFIG)
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        count = 0
        while any([await consumer.position(tp) < ends[tp] for tp in tps]):
            fetched = await consumer.getmany(timeout_ms=500, max_records=20_000)
            for tp, records in fetched.items():
                count += sum(1 for r in records if r.offset < ends[tp])
        return count
    finally:
        await consumer.stop()


def load_avro_schema() -> Any:
    """The current ChangeEvent schema, parsed, as a raw reader would load it."""
    here = Path(evstate.__file__).resolve().parent
    for folder in (here / "schemas", here.parent / "schemas"):
        found = sorted(folder.glob("change_event.v*.avsc"))
        if found:
            return fastavro.parse_schema(json.loads(found[-1].read_text()))
    raise SystemExit("no change_event schema found beside evstate")


@contextlib.asynccontextmanager
async def tailing(bootstrap: str, topic: str, partitions: int) -> AsyncIterator[None]:
    """A consumer reading ``topic`` as it grows, in the background, like evstate's applier."""
    consumer = await tail_consumer(bootstrap, topic, partitions)

    async def drain() -> None:
        while True:
            await consumer.getmany(timeout_ms=500)

    task = asyncio.create_task(drain())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await consumer.stop()


# -- odds and ends ---------------------------------------------------------------------


class _BenchParser(argparse.ArgumentParser):
    """Remembers the ``--json`` it parsed, so :func:`print_report` writes the JSON without
    every benchmark passing the path along (one benchmark per process)."""

    json_path: str | None = None

    def parse_known_args(
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
        parsed, rest = super().parse_known_args(args, namespace)
        _BenchParser.json_path = getattr(parsed, "json", None)
        return parsed, rest


def base_parser(description: str) -> argparse.ArgumentParser:
    """The options every benchmark takes: ``--quick``, ``--bootstrap`` and ``--json``."""
    parser = _BenchParser(description=description)
    parser.add_argument(
        "--quick", action="store_true", help="fewer iterations and smaller data sets (< 2 min)"
    )
    parser.add_argument(
        "--bootstrap",
        metavar="HOST:PORT",
        help="use this broker (default: EVSTATE_BOOTSTRAP_SERVERS, else start one)",
    )
    parser.add_argument(
        "--json",
        metavar="PATH",
        help="also write the report there as JSON (benchmarks/report.py reads it)",
    )
    return parser


def unique_name(stem: str) -> str:
    """A topic prefix (or similar) no other run uses."""
    return f"{stem}-{uuid.uuid4().hex[:10]}"


def note(text: str) -> None:
    """A progress line on stderr (the report itself goes to stdout)."""
    print(f"  {text}", file=sys.stderr, flush=True)


async def run_steps(
    steps: Sequence[Callable[[RigT], Awaitable[list[Row]]]], rig: RigT
) -> list[Row]:
    """Run each comparison in turn, noting its first docstring line and how long it took."""
    rows: list[Row] = []
    for step in steps:
        note(step.__doc__.splitlines()[0] if step.__doc__ else step.__name__)
        start = time.perf_counter()
        rows += await step(rig)
        note(f"done in {time.perf_counter() - start:.1f} s")
    return rows
