"""What a local Kafka node is, and the files that configure it.

:class:`Node` and :class:`ClusterState` (kept in ``cluster.json``), the text of each
node's ``server.properties`` and ``log4j2.properties``, and SCRAM credentials for the
SASL listener. Pure: nothing here starts a process or touches the network.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from evstate.errors import BrokerError

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

LOG4J2 = """\
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


def new_cluster_id() -> str:
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
    acl_writer: str | None = None  # --acl: the one SASL user that may write

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


def server_properties(node: Node, nodes: list[Node], *, acl_password: str | None = None) -> str:
    """The ``server.properties`` of one node of a loopback cluster.

    Args:
        node: the node to configure.
        nodes: every node of the cluster (for the controller and replication factors).
        acl_password: turn Kafka's authorizer on (see :func:`_with_acl`); the password of
            the broker's own user :data:`BROKER_USER`. Needs the SASL listener.

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
        if acl_password is not None:
            text = _with_acl(text, acl_password)
    elif acl_password is not None:
        raise BrokerError("--acl needs SASL users (--sasl-user NAME=PASSWORD)")
    return text


BROKER_USER = "evstate-broker"
"""The broker's own SASL user under ``--acl``: the only super user (PLAIN, a password made
at each start and kept in ``server.properties`` only)."""


def _with_acl(text: str, password: str) -> str:
    """Kafka's StandardAuthorizer, denying whatever no ACL allows.

    The broker's own traffic (controller quorum, replication, transaction markers) moves
    to SASL as :data:`BROKER_USER`, the one super user; the PLAINTEXT listener stays (for
    the readiness probe) but its anonymous clients are allowed nothing.
    """
    plain = (
        "org.apache.kafka.common.security.plain.PlainLoginModule required "
        f'username="{BROKER_USER}" password="{password}" user_{BROKER_USER}="{password}";'
    )
    text = text.replace("inter.broker.listener.name=PLAINTEXT\n", "")
    text = re.sub(
        r"(?m)^listener\.security\.protocol\.map=.*$",
        "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:SASL_PLAINTEXT,"
        "SASL_PLAINTEXT:SASL_PLAINTEXT",
        text,
    )
    mechanisms = ",".join(SCRAM_MECHANISMS)
    text = text.replace(
        f"listener.name.sasl_plaintext.sasl.enabled.mechanisms={mechanisms}\n",
        f"listener.name.sasl_plaintext.sasl.enabled.mechanisms={mechanisms},PLAIN\n",
    )
    return (
        text
        + f"""
# --acl: only what an ACL allows (evstate sets them: one writer, readers). The broker's
# own traffic logs in as {BROKER_USER}, the only super user; anonymous PLAINTEXT clients
# get nothing.
authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer
allow.everyone.if.no.acl.found=false
super.users=User:{BROKER_USER}
inter.broker.listener.name=SASL_PLAINTEXT
sasl.mechanism.inter.broker.protocol=PLAIN
listener.name.sasl_plaintext.plain.sasl.jaas.config={plain}
sasl.mechanism.controller.protocol=PLAIN
listener.name.controller.sasl.enabled.mechanisms=PLAIN
listener.name.controller.plain.sasl.jaas.config={plain}
"""
    )


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


def check_sasl_users(users: Mapping[str, str]) -> dict[str, str]:
    for name, password in users.items():
        if not isinstance(name, str) or not _SASL_USER.fullmatch(name):
            raise BrokerError(
                f"SASL user name {name!r} may only use letters, digits, '.', '_', '@' and '-'"
            )
        if not isinstance(password, str) or not password:
            raise BrokerError(f"SASL user {name!r} needs a non-empty password")
    return dict(users)
