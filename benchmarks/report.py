"""Run every benchmark on one broker and write docs/benchmarks.md and docs/benchmarks.png.

    python benchmarks/report.py [--quick] [--bootstrap HOST:PORT] [--peers-python PYTHON]
                                [--only NAME ...] [--docs DIR]

``make bench`` runs it with ``--quick``, ``make bench FULL=1`` without. Each
``benchmarks/bench_*.py`` runs in a subprocess of its own against the same broker (started
here unless given), with ``--quick`` when asked and ``--bootstrap`` / ``--json`` /
``--peers-python`` when its ``--help`` lists them. A benchmark that writes JSON gets a
Markdown table and bars in the chart; the printed table of any other one goes into the
document as text. A benchmark that fails is reported as failed, with the end of its
output; the others still run, and the exit status is then 1.
"""

from __future__ import annotations

import argparse
import ast
import asyncio
import functools
import importlib.metadata
import json
import os
import platform
import re
import shlex
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from _common import TIMES, broker_for

HERE = Path(__file__).resolve().parent
PEERS = "bench_peers"  # its figures get the chart and the "where evstate is behind" list
ROOT = HERE.parent


@dataclass
class Outcome:
    """What one benchmark run left: its command, output, JSON (if any), load, time."""

    name: str
    command: list[str]
    code: int
    stdout: str
    stderr: str
    seconds: float
    load: list[float]
    data: dict[str, Any] | None = None
    about: str = ""


# -- running ---------------------------------------------------------------------------


def options_of(bench: Path) -> set[str]:
    """The options among ours that ``bench --help`` mentions."""
    done = subprocess.run(
        [sys.executable, str(bench), "--help"], capture_output=True, text=True, timeout=120
    )
    wanted = ("--quick", "--bootstrap", "--json", "--peers-python")
    return {opt for opt in wanted if opt in done.stdout}


def about(bench: Path) -> str:
    """A benchmark's docstring, without its usage block (indented lines)."""
    doc = ast.get_docstring(ast.parse(bench.read_text())) or ""
    paragraphs = [p.strip("\n") for p in doc.split("\n\n")]
    return "\n\n".join(p for p in paragraphs if p.strip() and not p.startswith("    "))


async def run_one(bench: Path, args: argparse.Namespace, bootstrap: str, tmp: Path) -> Outcome:
    """Run ``bench`` to the end, sampling the load average while it runs."""
    options = options_of(bench)
    cmd = [sys.executable, str(bench.relative_to(ROOT))]
    if args.quick and "--quick" in options:
        cmd.append("--quick")
    if "--bootstrap" in options:
        cmd += ["--bootstrap", bootstrap]
    if args.peers_python and "--peers-python" in options:
        cmd += ["--peers-python", args.peers_python]
    json_path = tmp / f"{bench.stem}.json"
    if "--json" in options:
        cmd += ["--json", str(json_path)]
    print(f"== {shlex.join(cmd)}", file=sys.stderr, flush=True)
    load = [os.getloadavg()[0]]
    start = time.perf_counter()
    proc = await asyncio.create_subprocess_exec(
        *cmd,
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "NO_COLOR": "1", "COLUMNS": "132"},
    )
    waiting = asyncio.ensure_future(proc.communicate())
    while not waiting.done():
        await asyncio.wait([waiting], timeout=5)
        load.append(os.getloadavg()[0])
    out, err = waiting.result()
    seconds = time.perf_counter() - start
    stdout, stderr = out.decode(errors="replace"), err.decode(errors="replace")
    sys.stderr.write(stdout if proc.returncode == 0 else stdout + stderr)
    data = json.loads(json_path.read_text()) if json_path.exists() else None
    hidden = {str(json_path): "PATH", bootstrap: "HOST:PORT"}
    shown = ["python", *(hidden.get(c, c) for c in cmd[1:])]
    return Outcome(
        bench.stem, shown, proc.returncode or 0, stdout, stderr, seconds, load, data, about(bench)
    )


# -- the document ----------------------------------------------------------------------


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def version(dist: str) -> str:
    """The installed version of ``dist``, or ``-``."""
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "-"


def number(value: float) -> str:
    """A figure as the benchmarks print it."""
    if value >= 1000:
        return f"{value:,.0f}"
    return f"{value:.3g}" if value >= 1 else f"{value:.3f}"


def machine(outcomes: list[Outcome], kafka: str, mode: str) -> list[str]:
    """The machine section: CPUs, load during the run, interpreter, Kafka, libraries."""
    loads = [x for o in outcomes for x in o.load]
    libs = ", ".join(
        f"{d} {version(d)}" for d in ("aiokafka", "rocksdict", "fastavro", "ktables", "matplotlib")
    )
    peers = next((o.data.get("peers", {}) for o in outcomes if o.data and "peers" in o.data), {})
    peer_versions = ", ".join(f"{k} {v}" for k, v in peers.get("versions", {}).items()) or "-"
    lines = [
        "| | |",
        "| --- | --- |",
        f"| run | {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {mode} mode, commit {commit()} |",
        f"| CPUs | {os.cpu_count()} {TIMES} {cpu_model()} ({platform.machine()}) |",
        f"| memory | {memory_gib()} |",
        f"| OS | {platform.platform()} |",
        f"| Python | {platform.python_implementation()} {platform.python_version()} |",
        f"| Kafka | {kafka} |",
        f"| libraries | evstate {version('evstate')}, {libs} |",
        f"| peers | {peer_versions} |",
    ]
    if loads:
        lines.append(
            f"| load average (1 min) during the run | min {min(loads):.1f}, "
            f"median {sorted(loads)[len(loads) // 2]:.1f}, max {max(loads):.1f} |"
        )
    return lines


@functools.cache
def commit() -> str:
    """The checked-out commit (and whether the tree differs from it), as the run began."""
    try:
        head = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + (" with local changes" if dirty else "")


def memory_gib() -> str:
    """Total memory from /proc/meminfo."""
    try:
        first = Path("/proc/meminfo").read_text().splitlines()[0]
        return f"{int(first.split()[1]) / 2**20:.0f} GiB"
    except (OSError, IndexError, ValueError):
        return "unknown"


def ahead(row: dict[str, Any]) -> bool:
    """Whether evstate beats the baseline on this row."""
    if "evstate_ahead" in row:
        return bool(row["evstate_ahead"])
    return row["ratio"] > 1 if row.get("higher_is_better") else row["ratio"] < 1


EVEN = 0.05  # within 5% either way, a figure is a tie: below what these runs can resolve


def even(row: dict[str, Any]) -> bool:
    """Whether evstate and the baseline are within ``EVEN`` of each other."""
    return abs(row["ratio"] - 1) <= EVEN


def rows_table(data: dict[str, Any], peers: bool) -> list[str]:
    """A JSON report's rows as a Markdown table: against peers, whether evstate is ahead;
    against raw clients, the goal and whether it was met."""
    last = "evstate ahead?" if peers else "goal | met?"
    lines = [
        f"| measurement | {'peer' if peers else 'raw'} | evstate | ratio | {last} |",
        f"| --- | ---: | ---: | ---: | :---: |{'' if peers else ' :---: |'}",
    ]
    notes: list[str] = []
    for row in data["rows"]:
        name = row["name"]
        if row.get("note"):
            notes.append(row["note"])
            name += f" [{len(notes)}]"
        unit = row["unit"]
        if peers:
            verdict = "even" if even(row) else "yes" if ahead(row) else "**no**"
        else:
            met = {None: "—", True: "yes", False: "**no**"}[row.get("met")]
            verdict = f"{row.get('goal') or '—'} | {met}"
        lines.append(
            f"| {name} | {number(row['baseline'])} {unit} | {number(row['evstate'])} {unit} "
            f"| {row['ratio']:.2f}{TIMES} | {verdict} |"
        )
    lines.append("")
    lines += [f"[{i}] {n}  " for i, n in enumerate(notes, 1)]
    return lines


def behind(data: dict[str, Any]) -> list[str]:
    """Every row evstate loses, plainly, then what it would take to win, once per cause."""
    lost = [r for r in data["rows"] if not ahead(r) and not even(r)]
    tied = [r["name"] for r in data["rows"] if not ahead(r) and even(r)]
    lines = [] if lost else ["evstate is ahead of or even with the peers on every figure."]
    causes: dict[str, list[str]] = {}
    for row in lost:
        worse = row["ratio"] if not row["higher_is_better"] else 1 / row["ratio"]
        lines.append(
            f"- **{row['name']}**: evstate {number(row['evstate'])} {row['unit']} against "
            f"{number(row['baseline'])} {row['unit']}, {worse:.2f}{TIMES} worse."
        )
        if row.get("to_win"):
            causes.setdefault(row["to_win"], []).append(row["name"])
    if tied:
        lines += ["", f"Even (within {EVEN:.0%}, slightly behind): {'; '.join(tied)}."]
    if causes:
        lines += ["", "What it would take to win:", ""]
        lines += [f"- *{'; '.join(names)}*: {cause}" for cause, names in causes.items()]
    return lines


def chart(outcomes: list[Outcome], path: Path) -> bool:
    """Bars of bench_peers' rows: how many times better evstate is (> 1) or worse (< 1)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.ticker import FuncFormatter
    except ImportError:
        print("matplotlib is not installed: no chart", file=sys.stderr)
        return False
    data = next((o.data for o in outcomes if o.data and o.name == PEERS), None)
    if not data or not data["rows"]:
        return False
    rows = data["rows"]
    names = [r["name"] for r in rows]
    gains = [r["ratio"] if r.get("higher_is_better") else 1 / r["ratio"] for r in rows]
    colours = ["#2e7d32" if g >= 1 else "#c62828" for g in gains]
    fig, ax = plt.subplots(figsize=(11, 0.38 * len(rows) + 1.6))
    ax.barh(range(len(rows)), [g - 1 for g in gains], left=1, color=colours)
    ax.set_xscale("log")
    ax.set_xlim(min(min(gains), 1) / 1.5, max(max(gains), 1) * 2.5)  # room for the labels
    ax.axvline(1, color="black", linewidth=0.8)
    ax.set_yticks(range(len(rows)), names, fontsize=8)
    ax.invert_yaxis()
    for i, g in enumerate(gains):
        ax.annotate(
            f"{g:.2f}{TIMES}",
            (max(g, 1), i),
            xytext=(3, 0),
            textcoords="offset points",
            va="center",
        )
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}{TIMES}"))
    ax.set_xlabel(
        "evstate's advantage, log scale: the peer's time (or size) / evstate's, or evstate's "
        "rate / the peer's (> 1: evstate ahead, green)",
        fontsize=8,
    )
    ax.set_title(data["title"], fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


# The figures issue 17 set goals for, "where it stands" before this run. Each is found by
# benchmark and row name (a prefix); bench_serde prints text, so its rows are read from it.
@dataclass(frozen=True)
class Limit:
    label: str
    bench: str
    row: str  # a regular expression the row's name starts with
    goal: str  # as printed
    test: Any  # value -> met?
    before: str
    absolute: str = ""  # "MB": the evstate figure itself, not the ratio, meets the goal


LIMITS = [
    Limit(
        "lone `set` with history vs raw `send_and_wait` p50",
        "bench_history",
        r"lone set \(history\) vs send_and_wait p50",
        f"≤ 4{TIMES}",
        lambda r: r <= 4,
        f"8.8 to 13.3{TIMES}",
    ),
    Limit(
        "lone `set` with history vs a raw transaction (state + history) p50",
        "bench_history",
        r"lone set \(history\) vs raw transaction p50",
        "—",
        None,
        f"0.38 to 1.24{TIMES}",
    ),
    Limit(
        "lone `set` with history, 5 ms apart (as a deploy writes), vs raw `send_and_wait` p50",
        "bench_history",
        r"lone set \(history\), 5 ms apart, vs send_and_wait p50",
        "—",
        None,
        "—",
    ),
    Limit(
        "64 concurrent writers with history vs raw transactions of the same records",
        "bench_history",
        rf"64 writers {TIMES} \d+ sets \(history\) vs raw transactions",
        f"≥ 0.8{TIMES}",
        lambda r: r >= 0.8,
        f"0.44 to 0.64{TIMES}",
    ),
    Limit(
        "same, vs raw batched idempotent sends",
        "bench_history",
        rf"64 writers {TIMES} \d+ sets \(history\) vs batched sends",
        f"≥ 0.3{TIMES}",
        lambda r: r >= 0.3,
        f"0.11{TIMES}",
    ),
    Limit(
        "`set` then `get`, history off, vs raw produce→consume p50",
        "bench_store",
        re.escape("set+get, history off vs produce→consume p50"),
        f"≤ 1.5{TIMES}",
        lambda r: r <= 1.5,
        f"1.55 to 2.4{TIMES}",
    ),
    Limit(
        "same, vs a raw transaction of the state record→consume p50 (like for like)",
        "bench_store",
        re.escape("set+get, history off vs transaction (state record)→consume p50"),
        "—",
        None,
        "—",
    ),
    Limit(
        "`set` then `get`, history on, vs raw transaction→consume p50",
        "bench_store",
        re.escape("set+get vs transaction→consume p50"),
        f"≤ 1.2{TIMES}",
        lambda r: r <= 1.2,
        f"1.14 to 1.29{TIMES}",
    ),
    Limit(
        "serialize a typical state vs `json.dumps` of the same tree",
        "bench_serde",
        re.escape("serialize state"),
        f"≤ 2{TIMES}",
        lambda r: r <= 2,
        f"~4{TIMES} (105 µs)",
    ),
    Limit(
        "deserialize vs `json.loads`",
        "bench_serde",
        re.escape("deserialize state"),
        f"≤ 1.5{TIMES}",
        lambda r: r <= 1.5,
        f"~2.6{TIMES} (47 µs)",
    ),
    Limit(
        "`state_at` replay vs raw consume of the same records",
        "bench_history",
        re.escape("state_at, "),
        f"≥ 0.5{TIMES}",
        lambda r: r >= 0.5,
        f"0.27{TIMES}",
    ),
    Limit(
        "first `get` of one scope on an empty view vs a full rebuild",
        "bench_store",
        re.escape("first read of one scope vs full catch-up"),
        "≤ 1/6",
        lambda r: r <= 1 / 6,
        "waits for the full rebuild",
    ),
    Limit(
        "peak RSS at the largest table",
        "bench_peers",
        re.escape("peak RSS at 1M keys: evstate vs Faust"),
        "≤ 300 MB",
        lambda mb: mb <= 300,
        "244 MB (1M keys)",
        absolute="MB",
    ),
]


def _find_row(outcomes: list[Outcome], limit: Limit) -> tuple[str, float, float] | None:
    """(row name, ratio, evstate value) of the limit's row in this run, if it ran."""
    for o in outcomes:
        if o.name != limit.bench or o.code != 0:
            continue
        if o.data:
            for r in o.data["rows"]:
                if re.match(limit.row, r["name"]):
                    return r["name"], r["ratio"], r["evstate"]
        else:  # a printed table: │ name │ raw │ evstate │ ratio │ ...
            for line in o.stdout.splitlines():
                cells = [c.strip() for c in line.split("│")[1:-1]]
                if len(cells) >= 4 and re.fullmatch(limit.row, cells[0]):
                    return cells[0], float(cells[3].rstrip("x" + TIMES)), _num(cells[2])
    return None


def _num(text: str) -> float:
    return float(text.replace(",", ""))


def limits_section(outcomes: list[Outcome]) -> list[str]:
    """Issue 17's table: each figure before this work, in this run, and its goal."""
    out = [
        "## Against the limit",
        "",
        "The figures the write-path work (issue 17) set goals for: what they were before it "
        "(from earlier runs), what this run measured, and the goal. Each is a row of a "
        "table below.",
        "",
        "| figure | before | this run | goal | met? |",
        "| --- | ---: | ---: | :---: | :---: |",
    ]
    for limit in LIMITS:
        found = _find_row(outcomes, limit)
        if found is None:
            out.append(f"| {limit.label} | {limit.before} | not measured | {limit.goal} | — |")
            continue
        name, ratio, value = found
        figure = value if limit.absolute else ratio
        now = f"{value:,.0f} {limit.absolute}" if limit.absolute else f"{ratio:.2f}{TIMES}"
        if limit.absolute:
            now += f" ({name.split(':')[0].removeprefix('peak RSS at ')})"
        met = "—" if limit.test is None else ("yes" if limit.test(figure) else "**no**")
        out.append(f"| {limit.label} | {limit.before} | {now} | {limit.goal} | {met} |")
    return [*out, ""]


def document(outcomes: list[Outcome], kafka: str, mode: str, has_chart: bool) -> str:
    """docs/benchmarks.md."""
    full = mode == "full"
    out = [
        "# Benchmarks",
        "",
        "Written by `benchmarks/report.py` (`make bench`); do not edit by hand, run it again.",
        "Every benchmark measures evstate and a baseline side by side on the same broker in "
        "one run, alternating the two (AB BA ...) so background load hits both alike. "
        "Absolute numbers depend on the machine and its load; the ratios are the result.",
        "",
        "## Commands",
        "",
        "```sh",
        f"make bench{' FULL=1' if full else ''}    # this document: every benchmark, "
        f"{'full' if full else 'quick'} mode",
        "make bench FULL=1    # or: make bench-full",
        "```",
        "",
        "which ran these, one after the other, against one broker:",
        "",
        "```sh",
        *[shlex.join(o.command) for o in outcomes],
        "```",
        "",
        "## Machine",
        "",
        *machine(outcomes, kafka, mode),
        "",
        *limits_section(outcomes),
    ]
    for o in sorted(outcomes, key=lambda o: (o.name != PEERS, o.name)):
        out += [f"## {o.name}", "", o.about, ""]
        out += [f"`{shlex.join(o.command)}` — {o.seconds:.0f} s, exit {o.code}", ""]
        if o.code != 0:
            tail = (o.stdout + o.stderr).strip().splitlines()[-20:]
            out += ["**This benchmark failed.** The end of its output:", ""]
            out += ["```text", *tail, "```", ""]
            continue
        if o.data and o.name == PEERS:
            out += peers_section(o.data, has_chart)
        elif o.data:
            out += [f"**{o.data['title']}**", "", *rows_table(o.data, peers=False), ""]
        else:
            out += ["```text", *table_text(o.stdout), "```", ""]
    return "\n".join(out).rstrip() + "\n"


def peers_section(data: dict[str, Any], has_chart: bool) -> list[str]:
    """A JSON report: its table, the chart, where evstate is behind, what was left out."""
    out = [f"**{data['title']}**", "", *rows_table(data, peers=True), ""]
    if has_chart:
        out += ["![evstate's advantage over each peer, per figure](benchmarks.png)", ""]
        out += [
            "Cold is compared with cold and warm with warm: an *empty view* row sets a "
            "fresh evstate view against Faust recovering into an empty data dir, a *warm "
            "view* row against a Faust worker restarting on the data dir it kept (its "
            "RocksDB and the changelog offsets stored in it). ktables keeps its table in "
            "memory only, so every ktables start is a full replay, against either view.",
            "",
        ]
    out += ["### Where evstate is behind", "", *behind(data), ""]
    out += how_peers_ran(data.get("peers", {}))
    skipped = data.get("peers", {}).get("skipped", {})
    if skipped:
        out += ["### Not measured", ""]
        out += [f"- **{peer}**: {why}" for peer, why in skipped.items()]
        out.append("")
    load = data.get("load")
    if load:
        out += [
            f"Load average (1 min) during this benchmark: {load['min']:.1f} to "
            f"{load['max']:.1f} (median {load['median']:.1f}) on {os.cpu_count()} CPUs.",
            "",
        ]
    return out


def how_peers_ran(peers: dict[str, Any]) -> list[str]:
    """Which interpreter ran each peer, and why Faust may have one of its own."""
    versions, pythons = peers.get("versions", {}), peers.get("python", {})
    if not versions:
        return []
    lines = ["### How the peers ran", ""]
    for dist, module in (("ktables", "ktables"), ("faust-streaming", "faust")):
        if dist not in versions:
            continue
        python = pythons.get(module) or "?"
        where = "evstate's own venv" if python == sys.executable else f"`{python}`"
        lines.append(f"- {dist} {versions[dist]}, run by {where}.")
    lines += [
        "",
        "faust-streaming installs beside evstate without a conflict today, but it pins "
        "`click<8.4` and `venusian==3.1.0` and brings mode-streaming, so `make bench` keeps "
        "it in a venv of its own (`.venv/peers`) and runs its side in subprocesses; ktables "
        "needs only aiokafka and comes with evstate's `bench` extra.",
        "",
    ]
    return lines


def table_text(stdout: str) -> list[str]:
    """A benchmark's printed report, without the blank lines around it."""
    return stdout.strip("\n").splitlines()


# -- main ------------------------------------------------------------------------------


async def main() -> int:
    """Run the benchmarks, write the document and the chart."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="every benchmark's quick mode")
    parser.add_argument("--bootstrap", metavar="HOST:PORT", help="use this broker")
    parser.add_argument("--peers-python", metavar="PYTHON", help="passed to bench_peers")
    parser.add_argument("--only", nargs="+", metavar="NAME", help="e.g. bench_peers")
    parser.add_argument("--docs", default=str(ROOT / "docs"), help="where to write")
    args = parser.parse_args()
    commit()  # as the run begins: the run itself rewrites tracked files under docs/
    args.peers_python = args.peers_python or os.environ.get("EVSTATE_BENCH_PEERS_PYTHON")
    benches = sorted(HERE.glob("bench_*.py"))
    if args.only:
        benches = [b for b in benches if b.stem in args.only]
    outcomes = []
    with tempfile.TemporaryDirectory(prefix="evstate-bench-report-") as tmp:
        async with broker_for(args.bootstrap) as broker:
            for bench in benches:
                outcomes.append(await run_one(bench, args, broker.bootstrap_servers, Path(tmp)))
            kafka = f"{broker.kafka_version} ({broker.origin})"
            if broker.origin == "started for this run":
                kafka = f"Apache Kafka {broker.kafka_version}, one node on loopback, started here"
    write(Path(args.docs), outcomes, kafka, "quick" if args.quick else "full")
    return 1 if any(o.code != 0 for o in outcomes) else 0


def write(docs: Path, outcomes: list[Outcome], kafka: str, mode: str) -> None:
    """docs/benchmarks.md and docs/benchmarks.png."""
    docs.mkdir(parents=True, exist_ok=True)
    has_chart = chart(outcomes, docs / "benchmarks.png")
    (docs / "benchmarks.md").write_text(document(outcomes, kafka, mode, has_chart))
    print(f"wrote {docs / 'benchmarks.md'}" + (" and benchmarks.png" if has_chart else ""))


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
