"""evstate against the peers people would otherwise pick: ktables and Faust tables.

    python benchmarks/bench_peers.py [--quick] [--bootstrap HOST:PORT] [--json PATH]
                                     [--peers-python PYTHON]

Everything runs on the same broker in one run; each comparison alternates the sides
(AB BA ...) so background load on a shared machine hits them alike. The "raw" column of
the report holds the peer, the "evstate" column evstate, the ratio is evstate / peer.

1. read-your-writes: ``store.set`` then ``store.get`` (history on, the default, and off)
   vs ktables' ``KafkaTableWriter.set`` (idempotent, acks=all, as evstate's producer)
   then ``KafkaTable.barrier()`` and a read, with the fetch waits its README advises for
   fast read-your-writes (10 ms / 20 ms), and with its defaults (500 ms / 200 ms). Both
   sides serialize an Alchemy state on write and deserialize it on read. p50 and p99.
2. cold start: time until a fresh process can serve reads of a table of 100k keys (20k
   with ``--quick``), each in a new subprocess (``_peer_child.py``): evstate from an empty
   view dir and from a warm one, ktables replaying into memory (values decoded with
   ``json.loads``), a faust-streaming worker recovering its table's changelog into
   RocksDB (a fresh consumer group and data dir each time). Replay rate in events/s.
3. memory: the peak RSS of those processes at 100k and at 1M keys (20k and 100k), read
   from ``VmHWM``: a child's ``ru_maxrss`` starts from its parent's RSS at the fork.

faust-streaming need not share evstate's venv: ``--peers-python`` (or
``EVSTATE_BENCH_PEERS_PYTHON``) names an interpreter that has it; when no interpreter has
it, its rows are left out and the report says why. The state is a typical Alchemy
resource (an AWS Lambda function, ~1.7 KB of JSON); every topic has 12 partitions.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zlib
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from _common import (
    TIMES,
    BrokerInfo,
    LoadSampler,
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
    raw_record,
    resource_state,
    run_steps,
    unique_name,
)

from evstate import EvstateClient, KafkaStateStore, Scope, Settings, State
from evstate.layout_check import write_marker
from evstate.serde import deserialize_state, serialize_state

MS = 1e3
HERE = Path(__file__).resolve().parent
CHILD = HERE / "_peer_child.py"
SCOPE = Scope("billing-api", "prod")
PARTITIONS = 12
KEYS_PER_SCOPE = 1_000
FAST_FETCH = {"fetch_max_wait_ms": 10, "poll_timeout_ms": 20}  # ktables README's advice


@dataclass(frozen=True, slots=True, kw_only=True)
class Plan:
    """How much to measure."""

    label: str
    rounds: int  # interleaved rounds of read-your-writes
    writes: int  # set+read per side per round
    keys: int  # the cold-start table
    cold_rounds: int  # interleaved fresh processes per side
    big: int  # the second memory size (the first is ``keys``)


QUICK = Plan(
    label="quick",
    rounds=6,
    writes=15,
    keys=20_000,
    cold_rounds=2,
    big=100_000,
)
FULL = Plan(
    label="full",
    rounds=12,
    writes=50,
    keys=100_000,
    cold_rounds=3,
    big=1_000_000,
)


# Where evstate loses a comparison, what it would take to win; the report and
# docs/benchmarks.md print the line of every row evstate loses.
TO_WIN = {
    "ryw": "a default set is a Kafka transaction (add the partitions, send the state and "
    "history records, commit: the broker then writes the markers), and the read waits until "
    "the view has applied past the commit marker, which a read_committed fetch only returns "
    "once the last stable offset moves; ktables sends one record and reads uncommitted. "
    "history=False removes the transaction. The p99 tail has not been profiled yet: the "
    "candidates are the applier's fetch wait (100 ms long-poll, against ktables' tuned 10 ms) "
    "and the applier sharing the event loop with the writer.",
    "cold": "a cold evstate view decodes every Avro event and writes it to RocksDB with "
    "its offsets in the same WriteBatch; ktables only puts decoded values in a dict. To win: "
    "a warm view (see the warm rows), larger WriteBatches per fetch, or a view snapshot to "
    "start from instead of an empty dir.",
    "cold_warm": "a warm view only catches up from its stored offsets; losing here means "
    "the process start-up itself (view open, Kafka metadata and offset lookups, the first "
    "fetch) costs more than the peer's whole replay at this size.",
    "memory": "the view's consumer fetches up to 1 MiB per partition (max_partition_fetch_bytes "
    "in evstate.kafka.Tail): 12 partitions buffer ~12 MB of records plus their decoded copies, on "
    "top of RocksDB's 64 MB memtable and 64 MB block cache per column family. To win: a smaller "
    "write buffer (measured once at 100k keys: 16 MB took the peak RSS from 215 MB to 169 MB) "
    "and a block cache sized to the table.",
}


# -- the data --------------------------------------------------------------------------


def table_trees(count: int) -> Iterator[tuple[Scope, dict[str, Any]]]:
    """``count`` distinct serialized resources, ``KEYS_PER_SCOPE`` per scope."""
    template = serialize_state(SCOPE, resource_state(SCOPE, 0))
    for n in range(count):
        scope = Scope(f"stack-{n // KEYS_PER_SCOPE:04d}", "prod")
        rid = f"fn-{n % KEYS_PER_SCOPE:07d}"
        output = {**template["output"], "revisionId": f"r-{n}"}
        yield (
            scope,
            {**template, "id": rid, "fqn": f"{scope.path}/{rid}", "seq": n, "output": output},
        )


def probes(count: int) -> list[str]:
    """``SCOPE/PATH:ID`` of the first, a middle and the last key of a table."""
    picks = sorted({0, count // 2, count - 1})
    return [f"stack-{n // KEYS_PER_SCOPE:04d}/prod:fn-{n % KEYS_PER_SCOPE:07d}" for n in picks]


def evstate_records(count: int) -> Iterator[RawRecord]:
    """The state-topic records evstate writes for the table."""
    for scope, tree in table_trees(count):
        yield raw_record(scope, tree, PARTITIONS)


def json_records(count: int, json_keys: bool) -> Iterator[RawRecord]:
    """The table as a ktables user (key ``scope:id``) or a Faust table (JSON key) stores it."""
    for scope, tree in table_trees(count):
        key = f"{scope.path}:{tree['id']}"
        raw_key = json.dumps(key) if json_keys else key
        value = json.dumps(tree).encode()
        yield RawRecord(zlib.crc32(key.encode()) % PARTITIONS, raw_key.encode(), value, [])


@dataclass
class Tables:
    """One table of ``keys`` keys, loaded once in each peer's format."""

    keys: int
    evstate_prefix: str
    ktables_topic: str
    faust_topic: str


async def load_tables(bootstrap: str, keys: int, faust: bool) -> Tables:
    """Create and fill the three topics of a ``keys``-key table."""
    tables = Tables(
        keys,
        unique_name("peers-ev"),
        unique_name("peers-kt"),
        unique_name("peers-faust") + "-states-changelog",
    )
    start = time.perf_counter()
    state_topic = f"{tables.evstate_prefix}.state"
    await create_topic_like_evstate(bootstrap, state_topic, PARTITIONS)
    # First, as evstate does: the layout marker (a topic without one is refused).
    await write_marker(Settings(bootstrap_servers=bootstrap), state_topic)
    await bulk_load(bootstrap, state_topic, evstate_records(keys))
    await create_topic_like_evstate(bootstrap, tables.ktables_topic, PARTITIONS)
    await bulk_load(bootstrap, tables.ktables_topic, json_records(keys, json_keys=False))
    if faust:
        await create_topic_like_evstate(bootstrap, tables.faust_topic, PARTITIONS)
        await bulk_load(bootstrap, tables.faust_topic, json_records(keys, json_keys=True))
    note(f"{keys:,} keys loaded into each peer's topic in {time.perf_counter() - start:.1f} s")
    return tables


# -- the peers -------------------------------------------------------------------------


@dataclass
class Peers:
    """Which interpreter runs each kind of child, and why a peer is left out."""

    ktables_python: str | None
    faust_python: str | None
    versions: dict[str, str] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)


def find_peers(peers_python: str | None) -> Peers:
    """Look for ktables and faust-streaming in this interpreter and in ``peers_python``."""
    candidates = [sys.executable] + ([peers_python] if peers_python else [])
    found: dict[str, str | None] = {}
    versions: dict[str, str] = {}
    skipped: dict[str, str] = {}
    for dist, module in (("ktables", "ktables"), ("faust-streaming", "faust")):
        errors = []
        found[module] = None
        for python in candidates:
            ok, out = _probe(python, module, dist)
            if ok:
                found[module], versions[dist] = python, out
                break
            errors.append(f"{python}: {out}")
        if found[module] is None:
            skipped[dist] = "; ".join(errors)
    return Peers(found["ktables"], found["faust"], versions, skipped)


def _probe(python: str, module: str, dist: str) -> tuple[bool, str]:
    """Whether ``python`` imports ``module``; its version, or the last line of the error."""
    code = f"import {module}, importlib.metadata as m; print(m.version({dist!r}))"
    try:
        done = subprocess.run([python, "-c", code], capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return False, str(exc)
    if done.returncode == 0:
        return True, done.stdout.strip()
    lines = (done.stderr or done.stdout).strip().splitlines()
    return False, lines[-1] if lines else f"exit {done.returncode}"


# -- read-your-writes ------------------------------------------------------------------


async def compare_ryw(rig: Rig) -> list[Row]:
    """1: set then get vs ktables' set, barrier() and read; p50/p99."""
    states = [resource_state(SCOPE, i) for i in range(rig.plan.writes)]
    async with contextlib.AsyncExitStack() as stack:
        measures: dict[str, Any] = {}
        for name, history in (("evstate", True), ("evstate_plain", False)):
            client = EvstateClient(rig.settings(unique_name("peers-ryw"), history=history))
            await stack.enter_async_context(client)
            store = client.store(SCOPE)
            await store.init()
            measures[name] = _timed_all(_evstate_ryw(store), states)
        if rig.peers.ktables_python == sys.executable:
            for name, fetch in (("ktables", FAST_FETCH), ("ktables_default", {})):
                ryw = await stack.enter_async_context(_ktables_ryw(rig.bootstrap, fetch))
                measures[name] = _timed_all(ryw, states)
        await interleave(1, **measures)  # warm-up
        got = await interleave(rig.plan.rounds, **measures)
    if "ktables" not in got:
        rig.peers.skipped.setdefault(
            "ktables read-your-writes", "ktables is not importable by this interpreter"
        )
        return []
    kt, kt_default = percentiles(got["ktables"]), percentiles(got["ktables_default"])
    ev, plain = percentiles(got["evstate"]), percentiles(got["evstate_plain"])
    what = "set→get vs ktables set→barrier→read"
    return [
        Row(f"{what} p50", kt[50] * MS, ev[50] * MS, "ms", goal=at_most(1.5)),
        Row(f"{what} p99", kt[99] * MS, ev[99] * MS, "ms"),
        Row(f"{what}, history off p50", kt[50] * MS, plain[50] * MS, "ms"),
        Row(f"{what}, history off p99", kt[99] * MS, plain[99] * MS, "ms"),
        Row(
            f"{what} (ktables defaults) p50",
            kt_default[50] * MS,
            ev[50] * MS,
            "ms",
            note="ktables with its default fetch waits (500 ms long-poll, 200 ms poll); "
            "the other rows use the 10 ms / 20 ms its README advises for read-your-writes",
        ),
    ]


def _timed_all(run: Callable[[State], Any], states: list[State]) -> Any:
    async def measure() -> list[float]:
        samples = []
        for state in states:
            start = time.perf_counter()
            await run(state)
            samples.append(time.perf_counter() - start)
        return samples

    return measure


def _evstate_ryw(store: KafkaStateStore) -> Callable[[State], Any]:
    async def run(state: State) -> None:
        await store.set(state.id, state)
        got = await store.get(state.id)
        if got is None or got.seq != state.seq:
            raise AssertionError(f"evstate read-your-write lost {state.id}")

    return run


@contextlib.asynccontextmanager
async def _ktables_ryw(
    bootstrap: str, fetch: dict[str, int]
) -> AsyncIterator[Callable[[State], Any]]:
    """A ktables writer and table on a fresh topic; the write-then-read step."""
    from ktables import KafkaTable, KafkaTableWriter

    topic = unique_name("peers-ktables-ryw")
    await create_topic_like_evstate(bootstrap, topic, PARTITIONS)
    writer: Any = KafkaTableWriter(
        connection=bootstrap,
        topic=topic,
        value_encoder=lambda state: json.dumps(serialize_state(SCOPE, state)).encode(),
        enable_idempotence=True,
    )
    table: Any = KafkaTable(connection=bootstrap, topic=topic, value_decoder=json.loads, **fetch)

    async def run(state: State) -> None:
        key = f"{SCOPE.path}:{state.id}"
        await writer.set(key, state)
        if not await table.barrier(timeout=30):
            raise AssertionError("ktables barrier() returned False")
        got = deserialize_state(SCOPE, table[key])
        if got.seq != state.seq:
            raise AssertionError(f"ktables read-your-write lost {state.id}")

    async with writer, table:
        yield run


# -- cold start and memory -------------------------------------------------------------


@dataclass
class Rig:
    """What every comparison needs: the broker, a scratch dir, the plan, the peers."""

    bootstrap: str
    tmp: Path
    plan: Plan
    peers: Peers
    children: list[dict[str, Any]] = field(default_factory=list)

    def settings(self, prefix: str, **overrides: Any) -> Settings:
        """Settings for an evstate client with its own topics and view."""
        return Settings(
            bootstrap_servers=self.bootstrap,
            view_dir=str(self.tmp / prefix),
            topic_prefix=prefix,
            partitions=PARTITIONS,
            actor="bench",
            **overrides,
        )

    async def child(self, python: str, kind: str, label: str, *args: str) -> dict[str, Any]:
        """Run one ``_peer_child.py`` to its report; add the process start-up to it."""
        run_id = unique_name(label)
        out, log = self.tmp / f"{run_id}.json", self.tmp / f"{run_id}.log"
        cmd = [python, str(CHILD), kind, "--out", str(out), "--bootstrap", self.bootstrap]
        cmd += ["--partitions", str(PARTITIONS), *args]
        spawned = time.time()
        with log.open("wb") as sink:
            proc = await asyncio.create_subprocess_exec(*cmd, stdout=sink, stderr=sink)
            try:
                code = await asyncio.wait_for(proc.wait(), timeout=3600)
            except TimeoutError:
                proc.kill()
                await proc.wait()
                code = -9
        if code != 0 or not out.exists():
            tail = log.read_text(errors="replace").splitlines()[-15:]
            raise RuntimeError(f"{label} exited {code}:\n" + "\n".join(tail))
        result: dict[str, Any] = json.loads(out.read_text())
        if not result["probes_ok"]:
            raise RuntimeError(f"{label}: the probe keys were not all readable once ready")
        result["label"] = label
        result["spawn_to_ready_s"] = result["wall_ready"] - spawned
        self.children.append(result)
        return result


async def cold_starts(rig: Rig, tables: Tables, rounds: int) -> dict[str, list[dict[str, Any]]]:
    """Fresh processes of every kind, interleaved; their reports by kind."""
    warm_dir = rig.tmp / unique_name("warm-view")
    probe_args = [arg for p in probes(tables.keys) for arg in ("--probe", p)]
    ev_args = ["--topic-prefix", tables.evstate_prefix, *probe_args]
    warm_args = [*ev_args, "--view-dir", str(warm_dir)]
    await rig.child(sys.executable, "evstate", "evstate-prepare", *warm_args)
    results: dict[str, list[dict[str, Any]]] = {}

    def measure(kind: str, python: str, args: Callable[[], list[str]]) -> Any:
        async def run() -> list[float]:
            result = await rig.child(python, kind.split("_")[0], f"{kind}-{tables.keys}", *args())
            results.setdefault(kind, []).append(result)
            return [result["ready_s"]]

        return run

    def empty_dir() -> list[str]:
        return [*ev_args, "--view-dir", str(rig.tmp / unique_name("empty-view"))]

    measures = {
        "evstate_empty": measure("evstate_empty", sys.executable, empty_dir),
        "evstate_warm": measure("evstate_warm", sys.executable, lambda: warm_args),
    }
    if rig.peers.ktables_python:
        kt_args = ["--topic", tables.ktables_topic, *probe_args]
        measures["ktables"] = measure("ktables", rig.peers.ktables_python, lambda: kt_args)
    if rig.peers.faust_python:

        def faust_args() -> list[str]:
            app = unique_name("peers-faust-app")
            data = str(rig.tmp / app)
            return ["--topic", tables.faust_topic, "--app-id", app, "--view-dir", data, *probe_args]

        measures["faust"] = measure("faust", rig.peers.faust_python, faust_args)
        # Faust keeps its RocksDB between restarts as evstate keeps its view: a worker
        # restarting on a kept data dir resumes from the offsets stored in it. Each run
        # joins a fresh group (a killed worker's group would hold the next one back for
        # its session timeout), so the data dir is all it starts from.
        faust_warm = str(rig.tmp / unique_name("peers-faust-app-warm"))

        def faust_warm_args() -> list[str]:
            app = unique_name("peers-faust-app")
            return ["--topic", tables.faust_topic, "--app-id", app, "--view-dir", faust_warm]

        await rig.child(
            rig.peers.faust_python, "faust", "faust-prepare", *faust_warm_args(), *probe_args
        )
        measures["faust_warm"] = measure(
            "faust_warm", rig.peers.faust_python, lambda: [*faust_warm_args(), *probe_args]
        )
    await interleave(rounds, **measures)
    for path in rig.tmp.glob("empty-view-*"):
        shutil.rmtree(path, ignore_errors=True)
    for path in rig.tmp.glob("peers-faust-app-*"):
        shutil.rmtree(path, ignore_errors=True)
    shutil.rmtree(warm_dir, ignore_errors=True)
    return results


def median(results: list[dict[str, Any]], key: str) -> float:
    """The median of ``key`` over child reports."""
    return percentiles([r[key] for r in results])[50]


def cold_rows(keys: int, got: dict[str, list[dict[str, Any]]]) -> list[Row]:
    """Ready times and replay rates of the cold starts of a ``keys``-key table."""
    label = count_label(keys)
    rows = []
    empty, warm = got["evstate_empty"], got["evstate_warm"]
    for peer, name in (("ktables", "ktables replay"), ("faust", "Faust recovery")):
        if peer not in got:
            continue
        theirs = got[peer]
        rows += [
            Row(
                f"ready at {label} keys: empty view vs {name}"
                + (" into an empty data dir" if peer == "faust" else ""),
                median(theirs, "ready_s"),
                median(empty, "ready_s"),
                "s",
                note="from building the table object to the first reads served (imports "
                "excluded); with process start-up: "
                f"evstate {median(empty, 'spawn_to_ready_s'):.1f} s, "
                f"{peer} {median(theirs, 'spawn_to_ready_s'):.1f} s",
            ),
            Row(
                f"replay at {label} keys: empty view vs {name}",
                keys / median(theirs, "replay_s"),
                keys / median(empty, "replay_s"),
                "events/s",
                higher_is_better=True,
                note="Faust: from the partitions' assignment to recovery complete (its worker "
                "start-up and group join excluded)"
                if peer == "faust"
                else "",
            ),
        ]
        if peer == "ktables":
            # ktables keeps nothing between restarts: replaying is its only start.
            rows.append(
                Row(
                    f"ready at {label} keys: warm view vs {name}",
                    median(theirs, "ready_s"),
                    median(warm, "ready_s"),
                    "s",
                    note="ktables holds its table in memory only: every start replays",
                )
            )
    if "faust_warm" in got:
        rows.append(
            Row(
                f"ready at {label} keys: warm view vs Faust restart on its kept data dir",
                median(got["faust_warm"], "ready_s"),
                median(warm, "ready_s"),
                "s",
                note="warm with warm: both restart on what they stored (evstate its view, "
                "Faust its RocksDB and the changelog offsets in it); Faust still starts its "
                "worker and joins its group",
            )
        )
    return rows


def memory_rows(keys: int, got: dict[str, list[dict[str, Any]]]) -> list[Row]:
    """Peak RSS of each kind of process holding a ``keys``-key table."""
    label = count_label(keys)
    empty = got["evstate_empty"]
    rows = []
    for peer, name in (("ktables", "ktables (in memory)"), ("faust", "Faust (RocksDB)")):
        if peer in got:
            rows.append(
                Row(
                    f"peak RSS at {label} keys: evstate vs {name}",
                    median(got[peer], "maxrss_kb") / 1024,
                    median(empty, "maxrss_kb") / 1024,
                    "MB",
                )
            )
    return rows


def count_label(n: int) -> str:
    """``1M``, ``100k``."""
    return f"{n / 10**6:g}M" if n >= 10**6 else f"{n / 1000:g}k"


async def compare_cold(rig: Rig) -> list[Row]:
    """2 and 3: cold start and memory at the table size, memory at the big size."""
    plan, faust = rig.plan, rig.peers.faust_python is not None
    small = await load_tables(rig.bootstrap, plan.keys, faust)
    got = await cold_starts(rig, small, plan.cold_rounds)
    rows = cold_rows(plan.keys, got) + memory_rows(plan.keys, got)
    big = await load_tables(rig.bootstrap, plan.big, faust)
    got_big = await cold_starts(rig, big, 1)
    return rows + memory_rows(plan.big, got_big) + cold_rows(plan.big, got_big)


# -- the run, the report ---------------------------------------------------------------


async def run(plan: Plan, broker: BrokerInfo, peers: Peers) -> tuple[list[Row], Rig]:
    """Every comparison, in turn, in a scratch dir removed afterwards."""
    tmp = Path(tempfile.mkdtemp(prefix="evstate-bench-peers-"))
    rig = Rig(broker.bootstrap_servers, tmp, plan, peers)
    try:
        return await run_steps((compare_ryw, compare_cold), rig), rig
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def to_win(row: Row) -> str:
    """What it would take evstate to win ``row``."""
    if "set→get" in row.name:
        return TO_WIN["ryw"]
    if "RSS" in row.name:
        return TO_WIN["memory"]
    return TO_WIN["cold_warm" if "warm view" in row.name else "cold"]


async def main() -> int:
    """Parse the command line, get a broker, run, print the report."""
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument(
        "--peers-python",
        metavar="PYTHON",
        default=os.environ.get("EVSTATE_BENCH_PEERS_PYTHON"),
        help="an interpreter with faust-streaming (and ktables) when this one lacks them",
    )
    args = parser.parse_args()
    plan = QUICK if args.quick else FULL
    peers = find_peers(args.peers_python)
    for dist, why in peers.skipped.items():
        note(f"{dist} left out: {why}")
    with LoadSampler() as load:
        async with broker_for(args.bootstrap) as broker:
            rows, rig = await run(plan, broker, peers)
    summary = load.summary()
    extra = {
        "mode": plan.label,
        "plan": asdict(plan),
        "peers": {
            "versions": peers.versions,
            "skipped": peers.skipped,
            "python": {"ktables": peers.ktables_python, "faust": peers.faust_python},
        },
        "load": summary,
        "children": rig.children,
    }
    title = f"evstate vs ktables and Faust tables ({plan.label} mode; raw column = the peer)"
    print_report(title, rows, broker, extra=extra, to_win=to_win)
    for dist, why in peers.skipped.items():
        print(f"{dist} was not measured: {why}")
    for row in rows:
        if row.ratio < 1 if row.higher_is_better else row.ratio > 1:
            print(f"evstate is behind on {row.name} ({row.ratio:.2f}{TIMES}): {to_win(row)}")
    print(f"load average (1 min) during the run: {summary['min']:.1f} to {summary['max']:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
