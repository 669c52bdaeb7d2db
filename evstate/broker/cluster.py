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
import concurrent.futures
import contextlib
import json
import os
import secrets
import signal
import socket
import subprocess
import time
from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path

from evstate.broker import runtime
from evstate.broker.properties import (
    BROKER_USER,
    DEFAULT_HEAP,
    DEFAULT_PORT,
    LOG4J2,
    SCRAM_MECHANISMS,
    STATE_FILE,
    ClusterState,
    Node,
    NodeStatus,
    check_sasl_users,
    new_cluster_id,
    scram_credential,
    server_properties,
)
from evstate.config import Settings
from evstate.errors import (
    BrokerAlreadyRunningError,
    BrokerError,
    BrokerNotRunningError,
    BrokerStartTimeout,
    BrokerUnavailableError,
    PortInUseError,
)
from evstate.kafka import count_brokers
from evstate.kafka.acls import Acl, create_acls


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


def acl_plan(writer: str, users: list[str]) -> list[Acl]:
    """The ACLs of ``--acl``: ``writer`` may do anything; every other user may read and
    describe topics (and their configs) and read in consumer groups; nobody else a thing."""
    w = f"User:{writer}"
    acls = [
        Acl(w, "topic", "*", "all"),
        Acl(w, "group", "*", "all"),
        Acl(w, "transactional_id", "*", "all"),
        Acl(w, "cluster", "kafka-cluster", "all"),
    ]
    for user in users:
        if user != writer:
            r = f"User:{user}"
            acls += [
                Acl(r, "topic", "*", "read"),
                Acl(r, "topic", "*", "describe"),
                Acl(r, "topic", "*", "describe_configs"),
                Acl(r, "group", "*", "read"),
                Acl(r, "group", "*", "describe"),
            ]
    return acls


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
        acl_writer: str | None = None,
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
            acl_writer: turn Kafka's authorizer on (``--acl``): this SASL user may do
                anything (evstate serve's), every other SASL user may only read and
                describe topics and use consumer groups, anonymous clients nothing. Kept
                in the data dir: later starts keep it on. One node only.

        Raises:
            BrokerError: ``nodes`` is not 1 or 3, or a SASL user name or password is
                unusable.
        """
        if nodes not in (1, 3):
            raise BrokerError(f"--nodes must be 1 or 3, not {nodes}")
        self.sasl_users = check_sasl_users(sasl_users or {})
        if acl_writer is not None:
            if nodes != 1:
                raise BrokerError("--acl runs a single node (--nodes 1)")
            if acl_writer not in self.sasl_users:
                raise BrokerError(
                    f"--acl: the writer {acl_writer!r} must be one of the SASL users "
                    f"(--sasl-user {acl_writer}=PASSWORD)"
                )
        self.acl_writer = acl_writer
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
            acl_writer=raw.get("acl_writer"),
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
        formatted = self._check_restart(state)
        java = runtime.find_java(self.java)
        libs = runtime.kafka_jars(self.version, cache_dir=self.cache_dir, mvn=self.mvn)
        if state is None:
            state = ClusterState(version=self.version, cluster_id=new_cluster_id())
        state.version = self.version
        if not formatted:
            state.sasl_users = sorted(self.sasl_users)
        state.acl_writer = self.acl_writer or state.acl_writer
        acl_password = secrets.token_urlsafe(24) if state.acl_writer else None
        state.nodes = self._plan_nodes(bool(state.sasl_users))
        self.data_dir.mkdir(parents=True, exist_ok=True)
        # One salt per user and mechanism, the same on every node's bootstrap metadata.
        scram = [
            f"{mechanism}=[name={name},{scram_credential(mechanism, password)}]"
            for name, password in sorted(self.sasl_users.items())
            for mechanism in SCRAM_MECHANISMS
        ]
        for node in state.nodes:
            self._prepare(node, state, java.executable, libs, scram, acl_password)
        self._save(state)
        try:
            for node in state.nodes:
                self._launch(node, java.executable, libs)
                self._save(state)
            self._wait_ready(state.nodes, state.bootstrap_servers, len(state.nodes), timeout)
            if acl_password is not None:
                self._grant(state, acl_password)
        except BaseException:
            self.stop()
            raise
        return state.bootstrap_servers

    def _grant(self, state: ClusterState, password: str) -> None:
        """Set the ACLs of ``--acl`` (logged in as the broker's own super user)."""

        assert state.sasl_bootstrap_servers is not None
        settings = Settings(
            bootstrap_servers=state.sasl_bootstrap_servers,
            security_protocol="SASL_PLAINTEXT",
            sasl_mechanism="PLAIN",
            sasl_plain_username=BROKER_USER,
            sasl_plain_password=password,
            view_dir=str(self.data_dir),
        )
        acls = acl_plan(state.acl_writer or "", state.sasl_users)
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            pool.submit(asyncio.run, create_acls(settings, acls)).result()

    def _check_restart(self, state: ClusterState | None) -> bool:
        """Refuse to start over a running or different cluster; True if already formatted."""
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
        return formatted

    def _plan_nodes(self, sasl: bool) -> list[Node]:
        """Every node's ports and dir; refuses a port that is taken."""
        nodes = [
            Node(
                node_id=i + 1,
                port=self.port + i,
                controller_port=self.port + self.nodes + i,
                dir=str(self.data_dir / f"node-{i + 1}"),
                sasl_port=self.port + 2 * self.nodes + i if sasl else None,
            )
            for i in range(self.nodes)
        ]
        for node in nodes:
            controller_port = node.controller_port if node.is_controller else None
            for port in (node.port, controller_port, node.sasl_port):
                if port is not None and not _port_free(port):
                    raise PortInUseError(
                        f"port {port} on 127.0.0.1 is already in use (needed by node "
                        f"{node.node_id}); stop what holds it or pick another --port",
                        port=port,
                    )
        return nodes

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
        self,
        node: Node,
        state: ClusterState,
        java: str,
        libs: Path,
        scram: list[str],
        acl_password: str | None = None,
    ) -> None:
        """Write the node's configs; format its log dir (with ``scram`` users) if new."""
        ndir = Path(node.dir)
        ndir.mkdir(parents=True, exist_ok=True)
        text = server_properties(node, state.nodes, acl_password=acl_password)
        # Under --acl the file holds the broker user's password: for this user only.
        fd = os.open(node.properties, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chmod(node.properties, 0o600)
        (ndir / "log4j2.properties").write_text(LOG4J2)
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
