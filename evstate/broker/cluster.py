"""A real Apache Kafka on loopback, run from the jars Maven resolved (KRaft, no ZooKeeper).

One data dir holds one cluster: ``cluster.json`` (ports, cluster id, pids) and a folder per
node with its readable ``server.properties``, ``log4j2.properties``, ``server.log`` and the
KRaft log dir. Ports: node ``i`` (0-based) of an ``n``-node cluster listens on ``port + i``
for clients; ``port + n + i`` is its controller port, so one node takes Kafka's usual
9092/9093.

Node 1 is the cluster's only controller (the single KRaft voter, a combined
broker+controller); in a three-node cluster nodes 2 and 3 are brokers only
(``process.roles=broker``) and leave their controller ports unused. A fault test can then
kill brokers 2 and 3 and the controller still runs: it fences them, shrinks every
partition's in-sync replicas to node 1, and the broker refuses writes that need
``min.insync.replicas=2`` (NOT_ENOUGH_REPLICAS). With three voters, two dead nodes would
take the quorum's majority along: no fencing, no ISR change, writes merely time out.
Killing node 1 stops the controller: the cluster's metadata stays frozen (no leader
moves, no ISR changes) until it is back. Fencing a dead broker takes
``broker.session.timeout.ms`` (4 s here), so failover is quick on loopback.

With ``sasl_users``, each node also listens on ``port + 2n + i`` with SASL_PLAINTEXT and
SCRAM-SHA-256/512 (one node: 9094). The PLAINTEXT listener stays for the controller
quorum, replication and evstate's own readiness probe. SCRAM credentials are written into
the cluster metadata when the data dir is formatted (``kafka-storage format --add-scram``),
so they exist before the first client connects; the user names are kept in
``cluster.json``, passwords nowhere.

Processes are stopped by the pid recorded at start, and only after checking that the pid
still runs this node's ``server.properties``: a recycled pid is never signalled.
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import contextlib
import hashlib
import json
import os
import re
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path

from evstate.broker import runtime
from evstate.errors import (
    BrokerAlreadyRunningError,
    BrokerError,
    BrokerNotRunningError,
    BrokerStartTimeout,
    BrokerUnavailableError,
    PortInUseError,
)
from evstate.log import count_brokers

DEFAULT_PORT = 9092
DEFAULT_HEAP = "512m"
STATE_FILE = "cluster.json"
# The one KRaft controller (voter) of every cluster; the other nodes are brokers only.
CONTROLLER_NODE_ID = 1
# The SASL mechanisms of the SASL_PLAINTEXT listener, with the hash each one uses.
SCRAM_MECHANISMS = {"SCRAM-SHA-256": "sha256", "SCRAM-SHA-512": "sha512"}
# Kafka's default (and minimum) SCRAM iteration count.
SCRAM_ITERATIONS = 4096
# kafka-storage splits --add-scram on "," and "=": keep user names to a safe alphabet.
_SASL_USER = re.compile(r"[A-Za-z0-9._@-]+")

_LOG4J2 = """\
# Written by `evstate broker start`. Kafka logs through Log4j 2; this sends INFO and above
# to stdout, which evstate redirects to server.log beside this file.
status = warn
appender.out.type = Console
appender.out.name = STDOUT
appender.out.layout.type = PatternLayout
appender.out.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = info
rootLogger.appenderRef.out.ref = STDOUT
logger.kafka.name = kafka
logger.kafka.level = info
logger.request.name = kafka.request.logger
logger.request.level = warn
logger.cleaner.name = kafka.log.LogCleaner
logger.cleaner.level = info
# With fewer in-sync replicas than min.insync.replicas, the transaction coordinator
# retries its commit markers without pause and each try logs twice (gigabytes an hour):
# keep the first hundred of a burst, then ten a second.
logger.txnmarker.name = kafka.coordinator.transaction.TransactionMarkerRequestCompletionHandler
logger.txnmarker.filter.burst.type = BurstFilter
logger.txnmarker.filter.burst.level = ERROR
logger.txnmarker.filter.burst.rate = 10
logger.txnmarker.filter.burst.maxBurst = 100
logger.replica.name = kafka.server.ReplicaManager
logger.replica.filter.burst.type = BurstFilter
logger.replica.filter.burst.level = ERROR
logger.replica.filter.burst.rate = 10
logger.replica.filter.burst.maxBurst = 100
"""


def _new_cluster_id() -> str:
    """A KRaft cluster id: a random UUID, base64url without padding (as kafka-storage makes)."""
    return base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()


@dataclass(slots=True)
class Node:
    """One Kafka process: the controller and a broker (node 1), or a broker only."""

    node_id: int
    port: int
    controller_port: int
    dir: str
    pid: int | None = None
    sasl_port: int | None = None  # the SASL_PLAINTEXT listener, when SCRAM users exist

    @property
    def is_controller(self) -> bool:
        """Whether this node is the cluster's KRaft controller (node 1)."""
        return self.node_id == CONTROLLER_NODE_ID

    @property
    def properties(self) -> Path:
        """This node's ``server.properties``."""
        return Path(self.dir) / "server.properties"

    @property
    def log_file(self) -> Path:
        """Where this node's output goes."""
        return Path(self.dir) / "server.log"


@dataclass(slots=True)
class NodeStatus:
    """What ``status`` reports of one node."""

    node_id: int
    port: int
    pid: int | None
    running: bool


@dataclass(slots=True)
class ClusterState:
    """The content of ``cluster.json``."""

    version: str
    cluster_id: str
    nodes: list[Node] = field(default_factory=list)
    sasl_users: list[str] = field(default_factory=list)  # SCRAM users made at format time

    @property
    def bootstrap_servers(self) -> str:
        """``127.0.0.1:port`` of every node, comma-separated."""
        return ",".join(f"127.0.0.1:{n.port}" for n in self.nodes)

    @property
    def sasl_bootstrap_servers(self) -> str | None:
        """``127.0.0.1:sasl_port`` of every node, or None without a SASL listener."""
        if not self.nodes or any(n.sasl_port is None for n in self.nodes):
            return None
        return ",".join(f"127.0.0.1:{n.sasl_port}" for n in self.nodes)


def server_properties(node: Node, nodes: list[Node]) -> str:
    """The ``server.properties`` of one node of a loopback cluster.

    Args:
        node: the node to configure.
        nodes: every node of the cluster (for the controller and replication factors).

    Returns:
        The file's text, commented so a reader knows why each line is there.
    """
    n = len(nodes)
    controller = next(x for x in nodes if x.is_controller)
    rf = min(3, n)
    min_isr = 2 if rf >= 3 else 1
    if node.is_controller:
        role = "the controller and a broker"
        roles = "broker,controller"
        listeners = (
            f"PLAINTEXT://127.0.0.1:{node.port},CONTROLLER://127.0.0.1:{node.controller_port}"
        )
    else:
        role = f"a broker only; node {controller.node_id} is the controller"
        roles = "broker"
        listeners = f"PLAINTEXT://127.0.0.1:{node.port}"
    text = f"""\
# Written by `evstate broker start`: node {node.node_id} of {n} on loopback (KRaft), {role}.
# Edit nothing here by hand; it is rewritten at every start. See README "The local broker".
process.roles={roles}
node.id={node.node_id}
# One voter: brokers may die (fault tests kill them) while the controller keeps its quorum.
controller.quorum.voters={controller.node_id}@127.0.0.1:{controller.controller_port}
listeners={listeners}
advertised.listeners=PLAINTEXT://127.0.0.1:{node.port}
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
log.dirs={Path(node.dir) / "kraft-logs"}

# evstate creates its topics with explicit settings; an auto-created topic would be wrong.
auto.create.topics.enable=false
num.partitions=1

# Internal topics: replicated as far as this cluster allows.
offsets.topic.replication.factor={rf}
offsets.topic.num.partitions=12
transaction.state.log.replication.factor={rf}
transaction.state.log.min.isr={min_isr}
transaction.state.log.num.partitions=12
default.replication.factor={rf}

# Tests and demos join consumer groups often: do not wait for more members.
group.initial.rebalance.delay.ms=0
# Find dirty compacted segments quickly (tests prove compaction really ran).
log.cleaner.backoff.ms=1000
"""
    if n > 1:
        text += """
# Failover within seconds on loopback (defaults: 9 s, 2 s, 30 s). The controller fences a
# broker that missed heartbeats for the session timeout and drops it from every ISR; a
# leader drops a follower that fetched nothing for replica.lag.time.max.ms (which must
# stay >= replica.fetch.wait.max.ms, 500 ms). Heartbeats come well inside the session.
broker.session.timeout.ms=4000
broker.heartbeat.interval.ms=500
replica.lag.time.max.ms=5000
"""
    if node.sasl_port is not None:
        text = _with_sasl_listener(text, node)
    return text


def _with_sasl_listener(text: str, node: Node) -> str:
    """Add a SASL_PLAINTEXT (SCRAM) listener to a node's ``server.properties`` text."""
    sasl = f"SASL_PLAINTEXT://127.0.0.1:{node.sasl_port}"
    text = re.sub(r"(?m)^(listeners|advertised\.listeners)=(.*)$", rf"\1=\2,{sasl}", text)
    text = text.replace(
        "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
        "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT,"
        "SASL_PLAINTEXT:SASL_PLAINTEXT",
    )
    mechanisms = ",".join(SCRAM_MECHANISMS)
    jaas = "".join(
        f"listener.name.sasl_plaintext.{m.lower()}.sasl.jaas.config="
        "org.apache.kafka.common.security.scram.ScramLoginModule required;\n"
        for m in SCRAM_MECHANISMS
    )
    return (
        text
        + f"""
# Authenticated clients: SASL_PLAINTEXT://127.0.0.1:{node.sasl_port} accepts {mechanisms}.
# Users and their salted credentials live in the cluster metadata (added when this data dir
# was formatted, `kafka-storage format --add-scram`), not in this file. The broker's own
# traffic (controller quorum, replication) stays on the PLAINTEXT listeners above, so the
# login module needs no broker user of its own.
listener.name.sasl_plaintext.sasl.enabled.mechanisms={mechanisms}
{jaas}"""
    )


def scram_credential(mechanism: str, password: str, *, salt: bytes | None = None) -> str:
    """The ``--add-scram`` value fields for one password: salt, iterations, salted password.

    Passing the salted password (SCRAM's ``Hi(password, salt, i)``) instead of the password
    keeps the password itself off the formatter's command line and lets it hold any
    character (``kafka-storage`` splits its argument on commas).

    Args:
        mechanism: ``SCRAM-SHA-256`` or ``SCRAM-SHA-512``.
        password: the user's password.
        salt: the salt; random by default (tests pass one).

    Returns:
        ``salt=...,iterations=...,saltedpassword=...`` (standard base64 values).
    """
    salt = os.urandom(16) if salt is None else salt
    salted = hashlib.pbkdf2_hmac(
        SCRAM_MECHANISMS[mechanism], password.encode(), salt, SCRAM_ITERATIONS
    )
    return (
        f"salt={base64.b64encode(salt).decode()},iterations={SCRAM_ITERATIONS},"
        f"saltedpassword={base64.b64encode(salted).decode()}"
    )


def _check_sasl_users(users: Mapping[str, str]) -> dict[str, str]:
    for name, password in users.items():
        if not isinstance(name, str) or not _SASL_USER.fullmatch(name):
            raise BrokerError(
                f"SASL user name {name!r} may only use letters, digits, '.', '_', '@' and '-'"
            )
        if not isinstance(password, str) or not password:
            raise BrokerError(f"SASL user {name!r} needs a non-empty password")
    return dict(users)


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _runs_node(pid: int | None, node: Node) -> bool:
    """True when ``pid`` is alive and is the Java process of this node (not a recycled pid)."""
    if pid is None:
        return False
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    if stat.rsplit(")", 1)[-1].split()[0] == "Z":  # exited, not yet reaped
        return False
    return str(node.properties).encode() in raw.split(b"\0")


def _tail(path: Path, lines: int = 30) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return f"(no log at {path})"
    return "\n".join(text.splitlines()[-lines:])


def _probe(bootstrap_servers: str, timeout: float) -> int:
    """Count brokers from synchronous code, whether or not an event loop runs here."""
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, count_brokers(bootstrap_servers, timeout=timeout)).result()


class LocalBroker:
    """A real Kafka cluster of 1 or 3 nodes on loopback, owned by one data dir.

    Use :meth:`start` / :meth:`stop` / :meth:`status`; fault tests use :meth:`kill_node`
    and :meth:`start_node` to stop and bring back one node. Node 1 is the controller (see
    the module docstring): kill nodes 2 and 3 to take brokers away.
    """

    def __init__(
        self,
        data_dir: str | os.PathLike[str],
        *,
        port: int = DEFAULT_PORT,
        nodes: int = 1,
        version: str = runtime.KAFKA_VERSION,
        heap: str = DEFAULT_HEAP,
        java: str | None = None,
        mvn: str | None = None,
        cache_dir: Path | None = None,
        sasl_users: Mapping[str, str] | None = None,
    ) -> None:
        """Describe a cluster; nothing starts until :meth:`start`.

        Args:
            data_dir: the folder that holds the cluster's configs, logs and data.
            port: the first client port; see the module docstring for the others.
            nodes: 1, or 3 for replication and fault tests.
            version: the Apache Kafka version to run.
            heap: the JVM heap of each node (``-Xmx``).
            java: a Java executable; otherwise JAVA_HOME or PATH.
            mvn: a Maven executable; otherwise PATH.
            cache_dir: where resolved jars are kept.
            sasl_users: user name -> password; when given, every node gets a
                SASL_PLAINTEXT listener (SCRAM-SHA-256 and SCRAM-SHA-512) on
                ``port + 2 * nodes + i`` and these users are created when the data dir is
                formatted. A data dir formatted earlier keeps the users it was made with.

        Raises:
            BrokerError: ``nodes`` is not 1 or 3, or a SASL user name or password is
                unusable.
        """
        if nodes not in (1, 3):
            raise BrokerError(f"--nodes must be 1 or 3, not {nodes}")
        self.sasl_users = _check_sasl_users(sasl_users or {})
        self.data_dir = Path(data_dir).expanduser().resolve()
        self.port = port
        self.nodes = nodes
        self.version = version
        self.heap = heap
        self.java = java
        self.mvn = mvn
        self.cache_dir = cache_dir
        self._procs: dict[int, subprocess.Popen[bytes]] = {}

    # -- the state file -------------------------------------------------------------

    def load(self) -> ClusterState | None:
        """Read ``cluster.json``; None when this data dir never held a cluster."""
        path = self.data_dir / STATE_FILE
        try:
            raw = json.loads(path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise BrokerError(f"cannot read {path}: {exc}; remove the data dir") from exc
        return ClusterState(
            version=raw["version"],
            cluster_id=raw["cluster_id"],
            nodes=[Node(**n) for n in raw["nodes"]],
            sasl_users=list(raw.get("sasl_users", [])),
        )

    def _save(self, state: ClusterState) -> None:
        path = self.data_dir / STATE_FILE
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(state), indent=2) + "\n")
        tmp.replace(path)

    @property
    def bootstrap_servers(self) -> str:
        """The bootstrap address of the running cluster (or the one ``start`` would make)."""
        state = self.load()
        if state is not None:
            return state.bootstrap_servers
        return ",".join(f"127.0.0.1:{self.port + i}" for i in range(self.nodes))

    @property
    def sasl_bootstrap_servers(self) -> str | None:
        """The SASL_PLAINTEXT bootstrap address, or None when the cluster has no SASL users."""
        state = self.load()
        if state is not None:
            return state.sasl_bootstrap_servers
        if not self.sasl_users:
            return None
        first = self.port + 2 * self.nodes
        return ",".join(f"127.0.0.1:{first + i}" for i in range(self.nodes))

    # -- lifecycle ------------------------------------------------------------------

    def status(self) -> list[NodeStatus]:
        """What runs from this data dir, node by node (empty when it never held a cluster)."""
        state = self.load()
        if state is None:
            return []
        return [NodeStatus(n.node_id, n.port, n.pid, self._alive(n)) for n in state.nodes]

    def start(self, *, timeout: float = 120.0) -> str:
        """Resolve jars, format storage if new, start every node and wait until it answers.

        Returns:
            The bootstrap servers, e.g. ``"127.0.0.1:9092"``.

        Raises:
            JavaNotFoundError, MavenNotFoundError, JarResolutionError: see :mod:`runtime`.
            BrokerAlreadyRunningError: a node of this data dir still runs.
            PortInUseError: a port the cluster needs is taken.
            BrokerStartTimeout: no metadata answer in time (the message has the log tail).
            BrokerError: a node exited during start-up (the message has the log tail), or
                ``sasl_users`` names other users than the formatted data dir holds.
        """
        state = self.load()
        if state is not None:
            running = [n for n in state.nodes if self._alive(n)]
            if running:
                raise BrokerAlreadyRunningError(
                    f"a broker already runs from {self.data_dir} (pid "
                    f"{', '.join(str(n.pid) for n in running)}, bootstrap "
                    f"{state.bootstrap_servers}); use it, or run `evstate broker stop "
                    f"--data-dir {self.data_dir}` first"
                )
            if len(state.nodes) != self.nodes:
                raise BrokerError(
                    f"{self.data_dir} holds a {len(state.nodes)}-node cluster, not "
                    f"{self.nodes}; pick another --data-dir or remove that one"
                )
        formatted = any(
            (self.data_dir / f"node-{i + 1}" / "kraft-logs" / "meta.properties").exists()
            for i in range(self.nodes)
        )
        # Credentials are written at format time only; a silent mismatch would surface
        # later as a puzzling authentication failure.
        if (
            state is not None
            and formatted
            and self.sasl_users
            and sorted(self.sasl_users) != state.sasl_users
        ):
            raise BrokerError(
                f"{self.data_dir} was formatted with SASL users "
                f"({', '.join(state.sasl_users) or 'none'}), not "
                f"{', '.join(sorted(self.sasl_users))}; users are created when a data dir "
                "is formatted: pick a new --data-dir"
            )
        java = runtime.find_java(self.java)
        libs = runtime.kafka_jars(self.version, cache_dir=self.cache_dir, mvn=self.mvn)
        if state is None:
            state = ClusterState(version=self.version, cluster_id=_new_cluster_id())
        state.version = self.version
        if not formatted:
            state.sasl_users = sorted(self.sasl_users)
        sasl = bool(state.sasl_users)
        state.nodes = [
            Node(
                node_id=i + 1,
                port=self.port + i,
                controller_port=self.port + self.nodes + i,
                dir=str(self.data_dir / f"node-{i + 1}"),
                sasl_port=self.port + 2 * self.nodes + i if sasl else None,
            )
            for i in range(self.nodes)
        ]
        for node in state.nodes:
            controller_port = node.controller_port if node.is_controller else None
            for port in (node.port, controller_port, node.sasl_port):
                if port is not None and not _port_free(port):
                    raise PortInUseError(
                        f"port {port} on 127.0.0.1 is already in use (needed by node "
                        f"{node.node_id}); stop what holds it or pick another --port",
                        port=port,
                    )
        self.data_dir.mkdir(parents=True, exist_ok=True)
        # One salt per user and mechanism, the same on every node's bootstrap metadata.
        scram = [
            f"{mechanism}=[name={name},{scram_credential(mechanism, password)}]"
            for name, password in sorted(self.sasl_users.items())
            for mechanism in SCRAM_MECHANISMS
        ]
        for node in state.nodes:
            self._prepare(node, state, java.executable, libs, scram)
        self._save(state)
        try:
            for node in state.nodes:
                self._launch(node, java.executable, libs)
                self._save(state)
            self._wait_ready(state.nodes, state.bootstrap_servers, len(state.nodes), timeout)
        except BaseException:
            self.stop()
            raise
        return state.bootstrap_servers

    def _java_cmd(self, java: str, libs: Path, node: Node) -> list[str]:
        return [
            java,
            "-Xms128m",
            f"-Xmx{self.heap}",
            "-XX:+UseG1GC",
            "-XX:MaxGCPauseMillis=20",
            "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={Path(node.dir) / 'log4j2.properties'}",
            "-cp",
            f"{libs}/*",
        ]

    def _prepare(
        self, node: Node, state: ClusterState, java: str, libs: Path, scram: list[str]
    ) -> None:
        """Write the node's configs; format its log dir (with ``scram`` users) if new."""
        ndir = Path(node.dir)
        ndir.mkdir(parents=True, exist_ok=True)
        node.properties.write_text(server_properties(node, state.nodes))
        (ndir / "log4j2.properties").write_text(_LOG4J2)
        if (ndir / "kraft-logs" / "meta.properties").exists():
            return  # formatted at an earlier start: keep its data
        cmd = [
            *self._java_cmd(java, libs, node),
            "kafka.tools.StorageTool",
            "format",
            # One argument: a base64url id may start with '-', which argparse would
            # otherwise read as an option ("--cluster-id/-t: expected one argument").
            f"--cluster-id={state.cluster_id}",
            "-c",
            str(node.properties),
        ]
        for credential in scram:
            cmd += ["--add-scram", credential]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
        if proc.returncode != 0:
            tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-15:])
            raise BrokerError(f"formatting {ndir / 'kraft-logs'} failed:\n{tail}")

    def _launch(self, node: Node, java: str, libs: Path) -> None:
        cmd = [*self._java_cmd(java, libs, node), "kafka.Kafka", str(node.properties)]
        with node.log_file.open("ab") as out:
            proc = subprocess.Popen(
                cmd,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=node.dir,
                start_new_session=True,  # survives the CLI; Ctrl-C in a shell does not hit it
            )
        node.pid = proc.pid
        self._procs[proc.pid] = proc

    def _wait_ready(self, nodes: list[Node], bootstrap: str, expect: int, timeout: float) -> None:
        """Wait until ``bootstrap`` lists ``expect`` brokers, while ``nodes`` keep running."""
        deadline = time.monotonic() + timeout
        while True:
            for node in nodes:
                if not self._alive(node):
                    self._reap(node.pid)
                    raise BrokerError(
                        f"broker node {node.node_id} exited during start-up; the end of "
                        f"{node.log_file}:\n{_tail(node.log_file)}"
                    )
            left = deadline - time.monotonic()
            if left <= 0:
                tails = "\n".join(f"--- {n.log_file}\n{_tail(n.log_file)}" for n in nodes)
                raise BrokerStartTimeout(
                    f"the broker at {bootstrap} did not answer a metadata request within "
                    f"{timeout:g}s; the end of its log:\n{tails}",
                    log_tail=tails,
                )
            try:
                if _probe(bootstrap, min(3.0, max(left, 0.5))) >= expect:
                    return
            except BrokerUnavailableError:
                pass
            time.sleep(0.3)

    def _alive(self, node: Node) -> bool:
        """Whether ``node`` runs: our own child by its Popen; any other by its /proc entry.

        A child we just started may not have exec'd java yet, so its command line would
        not match; the Popen object knows better.
        """
        proc = self._procs.get(node.pid) if node.pid is not None else None
        if proc is not None:
            return proc.poll() is None
        return _runs_node(node.pid, node)

    def _reap(self, pid: int | None) -> None:
        proc = self._procs.pop(pid, None) if pid is not None else None
        if proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)

    def _signal_and_wait(self, nodes: list[Node], sig: int, timeout: float) -> list[Node]:
        """Signal each node, wait up to ``timeout``; return the nodes still running."""
        for node in nodes:
            if self._alive(node) and node.pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(node.pid, sig)
        deadline = time.monotonic() + timeout
        alive = list(nodes)
        while alive and time.monotonic() < deadline:
            alive = [n for n in alive if self._alive(n)]  # polling also reaps our children
            if alive:
                time.sleep(0.1)
        return alive

    def stop(self, *, timeout: float = 30.0) -> None:
        """Stop every node this data dir started: SIGTERM, then SIGKILL after ``timeout``.

        Raises:
            BrokerNotRunningError: this data dir never held a cluster.
        """
        state = self.load()
        if state is None:
            raise BrokerNotRunningError(f"no broker was started from {self.data_dir}")
        left = self._signal_and_wait(state.nodes, signal.SIGTERM, timeout)
        if left:
            self._signal_and_wait(left, signal.SIGKILL, 10.0)
        for node in state.nodes:
            self._reap(node.pid)
            node.pid = None
        self._save(state)

    def kill_node(self, node_id: int, sig: int = signal.SIGKILL) -> None:
        """Stop one node with ``sig`` (a fault test's crash) and wait until it is gone."""
        node = self._node(node_id)
        self._signal_and_wait([node], sig, 30.0)
        self._reap(node.pid)

    def start_node(self, node_id: int, *, timeout: float = 120.0) -> None:
        """Start one stopped node again with its old data and wait until it answers."""
        state = self.load()
        assert state is not None
        node = next(n for n in state.nodes if n.node_id == node_id)
        if self._alive(node):
            return
        java = runtime.find_java(self.java)
        libs = runtime.kafka_jars(state.version, cache_dir=self.cache_dir, mvn=self.mvn)
        self._launch(node, java.executable, libs)
        self._save(state)
        self._wait_ready([node], f"127.0.0.1:{node.port}", 1, timeout)

    def _node(self, node_id: int) -> Node:
        state = self.load()
        if state is None:
            raise BrokerNotRunningError(f"no broker was started from {self.data_dir}")
        for node in state.nodes:
            if node.node_id == node_id:
                return node
        raise BrokerError(f"{self.data_dir} has no node {node_id}")

    def wait_process(self) -> int:
        """Block until any node exits (foreground ``evstate broker start``); its exit code."""
        while True:
            for pid, proc in list(self._procs.items()):
                code = proc.poll()
                if code is not None:
                    self._procs.pop(pid, None)
                    return code
            time.sleep(0.5)
