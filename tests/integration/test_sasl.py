"""A real broker with a SASL/SCRAM listener: evstate's client logs in, or fails clearly.

One broker for the module, started by ``LocalBroker(sasl_users=...)``: SCRAM users are
created when its data dir is formatted, the SASL_PLAINTEXT listener sits beside the
PLAINTEXT one. Every client here is evstate's own, so the SASL settings travel the whole
way from :class:`~evstate.config.Settings` to aiokafka.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from evstate import EvstateClient, Scope
from evstate.broker import LocalBroker
from evstate.errors import AuthenticationError, BrokerError
from tests._util import free_port_block, subprocess_env
from tests.contract import make_state

APP = Scope("app", "sasl")
# Characters kafka-storage's --add-scram would split on: they must survive.
PASSWORD = 'al1ce,pw=with]"odd"chars'
USERS = {"alice": PASSWORD, "bob": "bob-secret"}
CONNECT_TIMEOUT = 5.0


@pytest.fixture(scope="module")
def sasl_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalBroker]:
    """A single-node broker with PLAINTEXT on port, SASL_PLAINTEXT on port + 2."""
    broker = LocalBroker(
        tmp_path_factory.mktemp("sasl-broker"), port=free_port_block(3), sasl_users=USERS
    )
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


def _client(
    broker: LocalBroker, tmp_path: Path, prefix: str, mechanism: str, user: str, password: str
) -> EvstateClient:
    assert broker.sasl_bootstrap_servers is not None
    return EvstateClient(
        bootstrap_servers=broker.sasl_bootstrap_servers,
        view_dir=str(tmp_path / "view"),
        topic_prefix=prefix,
        security_protocol="SASL_PLAINTEXT",
        sasl_mechanism=mechanism,
        sasl_plain_username=user,
        sasl_plain_password=password,
        connect_timeout=CONNECT_TIMEOUT,
    )


def test_sasl_listener_is_configured_and_advertised(sasl_broker: LocalBroker) -> None:
    state = sasl_broker.load()
    assert state is not None
    assert state.sasl_users == ["alice", "bob"]
    assert sasl_broker.sasl_bootstrap_servers == f"127.0.0.1:{sasl_broker.port + 2}"
    props = Path(state.nodes[0].dir, "server.properties").read_text()
    lines = dict(
        line.split("=", 1) for line in props.splitlines() if line and not line.startswith("#")
    )
    sasl = f"SASL_PLAINTEXT://127.0.0.1:{sasl_broker.port + 2}"
    assert lines["listeners"].split(",")[0] == f"PLAINTEXT://127.0.0.1:{sasl_broker.port}"
    assert sasl in lines["listeners"].split(",")
    assert sasl in lines["advertised.listeners"].split(",")
    assert lines["inter.broker.listener.name"] == "PLAINTEXT"
    mechanisms = lines["listener.name.sasl_plaintext.sasl.enabled.mechanisms"]
    assert mechanisms == "SCRAM-SHA-256,SCRAM-SHA-512"
    # No password is written anywhere in the data dir's configs or state.
    for path in (
        Path(state.nodes[0].dir) / "server.properties",
        sasl_broker.data_dir / "cluster.json",
    ):
        text = path.read_text()
        assert PASSWORD not in text
        assert "bob-secret" not in text


@pytest.mark.parametrize("mechanism", ["SCRAM-SHA-256", "SCRAM-SHA-512"])
async def test_right_credentials_init_set_get(
    sasl_broker: LocalBroker, tmp_path: Path, topic_prefix: str, mechanism: str
) -> None:
    async with _client(sasl_broker, tmp_path, topic_prefix, mechanism, "alice", PASSWORD) as c:
        store = c.store(APP)
        await store.init()
        await store.set("vpc", make_state(APP, "vpc", cidr="10.0.0.0/16"))
        got = await store.get("vpc")
    assert got is not None
    assert got.props == {"cidr": "10.0.0.0/16"}


@pytest.mark.parametrize(
    ("user", "password"),
    [("alice", "not-the-password"), ("mallory", PASSWORD)],
    ids=["wrong-password", "unknown-user"],
)
async def test_wrong_credentials_fail_clearly_and_quickly(
    sasl_broker: LocalBroker, tmp_path: Path, topic_prefix: str, user: str, password: str
) -> None:
    started = time.monotonic()
    with pytest.raises(AuthenticationError, match=rf"authentication failed.*'{user}'") as info:
        async with _client(sasl_broker, tmp_path, topic_prefix, "SCRAM-SHA-256", user, password):
            pass
    elapsed = time.monotonic() - started
    assert elapsed < CONNECT_TIMEOUT + 5, f"took {elapsed:.1f}s"
    err = info.value
    assert not err.retriable
    assert err.username == user
    assert err.mechanism == "SCRAM-SHA-256"
    assert err.bootstrap_servers == sasl_broker.sasl_bootstrap_servers
    assert "SCRAM-SHA-256" in str(err)
    assert password not in str(err)


def test_formatted_data_dir_refuses_other_users(tmp_path: Path) -> None:
    # A data dir formatted with alice: the users cannot change afterwards (no JVM needed).
    data = tmp_path / "b"
    (data / "node-1" / "kraft-logs").mkdir(parents=True)
    (data / "node-1" / "kraft-logs" / "meta.properties").write_text("cluster.id=x\n")
    (data / "cluster.json").write_text(
        json.dumps(
            {
                "version": "4.1.1",
                "cluster_id": "x",
                "nodes": [
                    {"node_id": 1, "port": 1, "controller_port": 2, "dir": str(data / "node-1")}
                ],
                "sasl_users": ["alice"],
            }
        )
    )
    broker = LocalBroker(data, port=free_port_block(3), sasl_users={"mallory": "pw"})
    with pytest.raises(BrokerError, match=r"formatted with SASL users \(alice\), not mallory"):
        broker.start()


@pytest.mark.parametrize(
    ("value", "message"),
    [("alice", "NAME=PASSWORD"), ("al,ice=pw", "may only use"), ("alice=", "non-empty password")],
)
def test_cli_rejects_bad_sasl_user(tmp_path: Path, value: str, message: str) -> None:
    proc = subprocess.run(
        [
            *(sys.executable, "-m", "evstate.cli", "broker", "start", "--detach"),
            *("--data-dir", str(tmp_path / "b"), "--sasl-user", value),
        ],
        capture_output=True,
        text=True,
        env=subprocess_env(),
        timeout=60,
        check=False,
    )
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr
