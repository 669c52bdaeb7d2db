"""One fresh process of bench_peers: open a table, wait until it can serve reads, report.

    python benchmarks/_peer_child.py KIND --out RESULT.json --bootstrap HOST:PORT ...

KIND is ``evstate`` (an :class:`evstate.EvstateClient` on a view dir, empty or warm),
``ktables`` (a ``ktables.KafkaTable`` replaying its topic into memory) or ``faust`` (a
faust-streaming worker recovering a RocksDB table from its changelog). The process times
the stretch from building the table object to the first successful reads of the probe
keys, then writes one JSON object to ``--out``: ``ready_s`` (that stretch), ``replay_s``
(for Faust the part after its consumer group gave it partitions, else ``ready_s``), ``import_s``
(importing the library), ``wall_ready`` (``time.time()`` when ready, so the parent can add
process start-up), ``maxrss_kb`` (this process's peak RSS, VmHWM) and ``version``.

Only the standard library is imported at the top: faust may live in a venv of its own
(``--peers-python`` of bench_peers), without evstate.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import sys
import time
from collections.abc import Callable
from importlib.metadata import version
from typing import Any


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("kind", choices=["evstate", "ktables", "faust"])
    parser.add_argument("--out", required=True, help="where to write the JSON result")
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--topic", help="ktables: the topic; faust: the changelog topic")
    parser.add_argument("--topic-prefix", help="evstate: the topic prefix")
    parser.add_argument("--view-dir", help="evstate: the view dir; faust: the data dir")
    parser.add_argument("--app-id", help="faust: the app id (a fresh consumer group)")
    parser.add_argument("--partitions", type=int, default=12)
    parser.add_argument("--values", choices=["json", "bytes"], default="json", help="ktables")
    parser.add_argument("--probe", action="append", default=[], help="SCOPE/PATH:ID to read")
    return parser


def _ids(probes: list[str]) -> list[str]:
    """The key ids of ``SCOPE/PATH:ID`` probes."""
    return [probe.split(":")[1] for probe in probes]


def _peak_rss_kb() -> int:
    """This program's peak RSS (VmHWM), in KB.

    Not ``ru_maxrss``: Linux carries the parent's RSS at fork over into the child's
    ``ru_maxrss`` across exec, so every child would report at least the parent's size.
    """
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def _finish(
    out: str, kind: str, ready_s: float, import_s: float, probes_ok: bool, replay_s: float = 0.0
) -> None:
    dist = {"evstate": "evstate", "ktables": "ktables", "faust": "faust-streaming"}[kind]
    result = {
        "kind": kind,
        "ready_s": ready_s,
        "replay_s": replay_s or ready_s,
        "import_s": import_s,
        "wall_ready": time.time(),
        "maxrss_kb": _peak_rss_kb(),
        "probes_ok": probes_ok,
        "version": version(dist),
        "python": sys.version.split()[0],
    }
    with open(out, "w") as f:
        json.dump(result, f)


async def _evstate(args: argparse.Namespace) -> None:
    start = time.perf_counter()
    from evstate import EvstateClient, Scope, Settings

    imported = time.perf_counter()
    settings = Settings(
        bootstrap_servers=args.bootstrap,
        view_dir=args.view_dir,
        topic_prefix=args.topic_prefix,
        partitions=args.partitions,
        actor="bench",
        read_timeout=600.0,
    )
    async with EvstateClient(settings) as client:
        await client.catch_up()
        found = []
        for probe in args.probe:
            path, key = probe.split(":")
            found.append(await client.store(Scope(*path.split("/"))).get(key))
        ready = time.perf_counter()
        ok = [s.id if s is not None else None for s in found] == _ids(args.probe)
        _finish(args.out, "evstate", ready - imported, imported - start, ok)


async def _ktables(args: argparse.Namespace) -> None:
    start = time.perf_counter()
    from ktables import KafkaTable

    imported = time.perf_counter()
    decoder: Callable[[bytes], Any] = json.loads if args.values == "json" else bytes
    table: Any = KafkaTable(
        connection=args.bootstrap, topic=args.topic, value_decoder=decoder, catchup_timeout=3600
    )
    async with table:
        found = [table.get(probe) for probe in args.probe]
        ready = time.perf_counter()
        ok = table.status == "caught_up" and all(v is not None for v in found)
        _finish(args.out, "ktables", ready - imported, imported - start, ok)


def _faust(args: argparse.Namespace) -> None:
    start = time.perf_counter()
    import faust
    from faust.worker import Worker

    imported = time.perf_counter()
    app = faust.App(
        args.app_id,
        broker=[f"kafka://{server}" for server in args.bootstrap.split(",")],
        store="rocksdb://",
        datadir=args.view_dir,
        topic_partitions=args.partitions,
        table_standby_replicas=0,
        web_enabled=False,
    )
    changelog = app.topic(args.topic, partitions=args.partitions, compacting=True)
    table = app.Table("states", default=None, partitions=args.partitions, changelog_topic=changelog)

    assigned: list[float] = []

    @app.on_partitions_assigned.connect
    async def on_assigned(sender: Any, *args: Any, **kwargs: Any) -> None:
        # Recovery starts here; before it, the worker starts and joins its group.
        assigned.append(time.perf_counter())

    @app.task
    async def report_when_recovered() -> None:
        await app.tables.recovery.completed.wait()
        found = [table.get(probe) for probe in args.probe]
        ready = time.perf_counter()
        ok = [v.get("id") if isinstance(v, dict) else None for v in found] == _ids(args.probe)
        replay = ready - assigned[0] if assigned else 0.0
        _finish(args.out, "faust", ready - imported, imported - start, ok, replay)
        sys.stdout.flush()
        # The consumer group is this run's alone: no need to leave it politely.
        os._exit(0)

    Worker(app, loglevel="warning", quiet=True).execute_from_commandline()


def main() -> None:
    """Run one KIND and exit."""
    args = _parser().parse_args()
    if args.kind == "faust":
        _faust(args)
    else:
        asyncio.run(_evstate(args) if args.kind == "evstate" else _ktables(args))


if __name__ == "__main__":
    main()
