"""docker/compose.yml and docker/Dockerfile say what evstate's own local broker says.

No Docker engine runs here; these tests read the files. Broker settings are compared with
``evstate.broker.server_properties``, the file ``evstate broker start`` writes, so the two
cannot drift apart unnoticed.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from evstate.broker import DEFAULT_PORT, KAFKA_VERSION, server_properties
from evstate.broker.properties import Node

DOCKER = Path(__file__).resolve().parents[2] / "docker"
CLUSTER = ("kafka-1", "kafka-2", "kafka-3")
# Settings that name hosts, and so differ between a loopback broker and containers; their
# ports are checked separately. log.dirs is a path inside the image.
HOST_SPECIFIC = {
    "listeners",
    "advertised.listeners",
    "controller.quorum.voters",
    "inter.broker.listener.name",
    "listener.security.protocol.map",
    "log.dirs",
}


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    loaded = yaml.safe_load((DOCKER / "compose.yml").read_text())
    assert isinstance(loaded, dict)
    return loaded


def _services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    services: dict[str, dict[str, Any]] = compose["services"]
    return services


def _env(service: dict[str, Any]) -> dict[str, str]:
    env = service["environment"]
    assert isinstance(env, dict), "environment must be a mapping"
    return {key: str(value) for key, value in env.items()}


def _as_properties(env: dict[str, str]) -> dict[str, str]:
    """The apache/kafka image's rule: KAFKA_FOO_BAR=x becomes foo.bar=x."""
    return {
        key.removeprefix("KAFKA_").lower().replace("_", "."): value
        for key, value in env.items()
        if key.startswith("KAFKA_")
    }


def _parse_properties(text: str) -> dict[str, str]:
    lines = (line.strip() for line in text.splitlines())
    pairs = (line.split("=", 1) for line in lines if line and not line.startswith("#"))
    return {key: value for key, value in pairs}


def _evstate_nodes(nodes: int, port: int = DEFAULT_PORT) -> list[Node]:
    """The nodes `evstate broker start --nodes n` runs: client port+i, controller port+n+i."""
    return [
        Node(node_id=i + 1, port=port + i, controller_port=port + nodes + i, dir=f"/n{i + 1}")
        for i in range(nodes)
    ]


def _listener_ports(listeners: str) -> dict[str, int]:
    """``NAME://host:port,...`` -> {NAME: port}."""
    ports = {}
    for item in listeners.split(","):
        match = re.fullmatch(r"(\w+)://[^:,]*:(\d+)", item.strip())
        assert match, f"unreadable listener {item!r}"
        ports[match.group(1)] = int(match.group(2))
    return ports


def _published(service: dict[str, Any]) -> list[tuple[str, int, int]]:
    """``ip:host:container`` port mappings as (ip, host port, container port)."""
    out = []
    for spec in service.get("ports", []):
        ip, host, container = str(spec).split(":")
        out.append((ip, int(host), int(container)))
    return out


def _voters(voters: str) -> dict[int, int]:
    """``id@host:port,...`` -> {id: port}."""
    out = {}
    for item in voters.split(","):
        node_id, address = item.split("@")
        out[int(node_id)] = int(address.rsplit(":", 1)[1])
    return out


def _check_node(service: dict[str, Any], node: Node, nodes: list[Node]) -> None:
    """One compose service against the node evstate would run in its place."""
    env = _env(service)
    props = _as_properties(env)
    expected = _parse_properties(server_properties(node, nodes))
    for key, value in expected.items():
        if key in HOST_SPECIFIC:
            continue
        assert props.get(key) == value, f"{key}: compose has {props.get(key)}, evstate {value}"
    extra = set(props) - set(expected) - HOST_SPECIFIC
    assert not extra, f"settings evstate's broker does not have: {sorted(extra)}"

    listeners = _listener_ports(props["listeners"])
    assert listeners["PLAINTEXT"] == node.port
    if node.is_controller:
        assert listeners["CONTROLLER"] == node.controller_port
    else:  # a broker-only node must not listen as a controller
        assert "CONTROLLER" not in listeners
    assert props["controller.listener.names"] == "CONTROLLER"
    advertised = props["advertised.listeners"].split(",")
    assert f"PLAINTEXT://127.0.0.1:{node.port}" in advertised
    inter = props["inter.broker.listener.name"]
    assert inter in listeners
    assert inter != "CONTROLLER"
    protocols = dict(p.split(":") for p in props["listener.security.protocol.map"].split(","))
    assert set(protocols) == set(listeners) | {"CONTROLLER"}
    assert set(protocols.values()) == {"PLAINTEXT"}

    assert _voters(props["controller.quorum.voters"]) == {
        n.node_id: n.controller_port for n in nodes if n.is_controller
    }
    assert _published(service) == [("127.0.0.1", node.port, node.port)]
    assert env.get("CLUSTER_ID"), "a KRaft cluster needs a fixed id"
    health = service["healthcheck"]["test"]
    assert health[0] in ("CMD", "CMD-SHELL")
    assert "kafka-broker-api-versions.sh" in " ".join(health)


def test_every_broker_uses_the_pinned_apache_kafka_image(compose: dict[str, Any]) -> None:
    for name in ("kafka", *CLUSTER):
        image = _services(compose)[name]["image"]
        repo, _, tag = image.partition(":")
        assert repo == "apache/kafka"
        assert re.fullmatch(r"\d+\.\d+\.\d+", tag), f"{name}: tag {tag!r} is not pinned"
        assert tag == KAFKA_VERSION == "4.1.1"


def test_single_node_matches_evstate_broker_defaults(compose: dict[str, Any]) -> None:
    service = _services(compose)["kafka"]
    assert "profiles" not in service, "the single node is what `up` starts by default"
    nodes = _evstate_nodes(1)
    _check_node(service, nodes[0], nodes)
    props = _as_properties(_env(service))
    assert (props["node.id"], nodes[0].port, nodes[0].controller_port) == ("1", 9092, 9093)
    assert props["offsets.topic.replication.factor"] == "1"
    assert props["transaction.state.log.replication.factor"] == "1"
    assert props["group.initial.rebalance.delay.ms"] == "0"


def test_cluster_profile_matches_evstate_three_node_broker(compose: dict[str, Any]) -> None:
    services = _services(compose)
    nodes = _evstate_nodes(3)
    for name, node in zip(CLUSTER, nodes, strict=True):
        assert services[name]["profiles"] == ["cluster"]
        _check_node(services[name], node, nodes)

    envs = [_as_properties(_env(services[name])) for name in CLUSTER]
    assert len({env["node.id"] for env in envs}) == 3
    host_ports = [port for name in CLUSTER for _, port, _ in _published(services[name])]
    assert host_ports == [9092, 9093, 9094]
    assert len({env["controller.quorum.voters"] for env in envs}) == 1
    assert len({_env(services[name])["CLUSTER_ID"] for name in CLUSTER}) == 1
    assert [env["process.roles"] for env in envs] == ["broker,controller", "broker", "broker"]
    for env in envs:
        assert env["offsets.topic.replication.factor"] == "3"
        assert env["transaction.state.log.replication.factor"] == "3"
        assert env["transaction.state.log.min.isr"] == "2"


def test_service_names_match_advertised_container_listeners(compose: dict[str, Any]) -> None:
    services = _services(compose)
    for name in ("kafka", *CLUSTER):
        service = services[name]
        props = _as_properties(_env(service))
        inter = props["inter.broker.listener.name"]
        advertised = dict(item.split("://") for item in props["advertised.listeners"].split(","))
        assert advertised[inter].split(":")[0] == service["hostname"] == name
        for voter in props["controller.quorum.voters"].split(","):
            host = voter.split("@")[1].split(":")[0]
            assert host in services


def test_serve_service_runs_evstate_against_the_broker(compose: dict[str, Any]) -> None:
    services = _services(compose)
    serve = services["evstate"]
    assert serve["profiles"] == ["serve"]
    assert serve["build"] == {"context": "..", "dockerfile": "docker/Dockerfile"}
    assert serve["command"] == ["serve", "--host", "0.0.0.0", "--port", "8787"]
    assert serve["ports"] == ["127.0.0.1:8787:8787"]  # the serve default port, loopback only
    assert serve["environment"]["EVSTATE_TOKEN"].startswith("${EVSTATE_TOKEN:?")
    assert serve["depends_on"]["kafka"]["condition"] == "service_healthy"
    bootstrap = serve["environment"]["EVSTATE_BOOTSTRAP_SERVERS"]
    host, port = bootstrap.split(":")
    kafka = _as_properties(_env(services["kafka"]))
    inter = kafka["inter.broker.listener.name"]
    assert f"{inter}://{host}:{port}" in kafka["advertised.listeners"].split(",")
    view_dir = serve["environment"]["EVSTATE_VIEW_DIR"]
    mounts = [str(volume).split(":")[1] for volume in serve["volumes"]]
    assert any(view_dir.startswith(mount + "/") for mount in mounts)


def _instructions(text: str) -> list[tuple[str, str]]:
    """A Dockerfile's ``(INSTRUCTION, arguments)``, continuation lines joined."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        op, _, args = (pending + line).partition(" ")
        out.append((op.upper(), " ".join(args.split())))
        pending = ""
    return out


def test_dockerfile_installs_evstate_as_non_root() -> None:
    instructions = _instructions((DOCKER / "Dockerfile").read_text())
    froms = [args for op, args in instructions if op == "FROM"]
    assert froms == ["python:3.11-slim"]
    runs = " ".join(args for op, args in instructions if op == "RUN")
    assert re.search(r"pip install (\S+ )*/src\b", runs), "installs the project"
    copies = [args for op, args in instructions if op == "COPY"]
    assert copies == [". /src"]
    users = [args for op, args in instructions if op == "USER"]
    assert users, "no USER: the container would run as root"
    assert users[-1] not in ("root", "0")
    assert re.search(rf"useradd .*\b{re.escape(users[-1])}\b", runs)
    assert [args for op, args in instructions if op == "ENTRYPOINT"] == ['["evstate"]']
