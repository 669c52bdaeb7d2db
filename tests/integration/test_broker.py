"""`evstate broker`: a real Apache Kafka starts, serves, replicates, stops, and fails clearly."""

from __future__ import annotations

import logging
import socket
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from evstate.broker import LocalBroker
from evstate.broker.cluster import _probe
from evstate.errors import (
    BrokerAlreadyRunningError,
    BrokerStartTimeout,
    BrokerUnavailableError,
    PortInUseError,
)
from tests._util import free_port_block, subprocess_env


def _java_processes_using(data_dir: Path) -> list[int]:
    """Pids of live processes whose command line mentions ``data_dir``."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
            state = (entry / "stat").read_text().rsplit(")", 1)[-1].split()[0]
        except OSError:
            continue
        if state != "Z" and str(data_dir).encode() in cmdline:
            pids.append(int(entry.name))
    return pids


async def _round_trip(bootstrap: str, replication: int = 1, min_isr: int = 1) -> None:
    topic = f"rt-{uuid.uuid4().hex[:8]}"
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics(
            [
                NewTopic(
                    topic,
                    num_partitions=3,
                    replication_factor=replication,
                    topic_configs={"min.insync.replicas": str(min_isr)},
                )
            ]
        )
    finally:
        await admin.close()
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True)
    await producer.start()
    try:
        sent = [await producer.send_and_wait(topic, f"v{i}".encode(), key=b"k") for i in range(5)]
    finally:
        await producer.stop()
    assert [m.offset for m in sent] == [0, 1, 2, 3, 4]
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", enable_auto_commit=False
    )
    await consumer.start()
    try:
        got = []
        while len(got) < 5:
            batch = await consumer.getmany(timeout_ms=10_000)
            assert batch, "no record came back within 10 s"
            got.extend(r.value for records in batch.values() for r in records)
    finally:
        await consumer.stop()
    assert got == [f"v{i}".encode() for i in range(5)]


async def test_raw_produce_consume_round_trip(bootstrap_servers: str) -> None:
    await _round_trip(bootstrap_servers)


@pytest.mark.cluster
async def test_three_node_cluster_writes_with_replication_factor_3(cluster3: LocalBroker) -> None:
    statuses = cluster3.status()
    assert [s.node_id for s in statuses] == [1, 2, 3]
    assert all(s.running for s in statuses)
    assert len({s.port for s in statuses}) == 3
    state = cluster3.load()
    assert state is not None
    cluster_ids = {
        (Path(n.dir) / "kraft-logs" / "meta.properties")
        .read_text()
        .split("cluster.id=")[1]
        .splitlines()[0]
        for n in state.nodes
    }
    assert cluster_ids == {state.cluster_id}
    await _round_trip(cluster3.bootstrap_servers, replication=3, min_isr=2)


def test_lifecycle_start_twice_status_stop_leaves_no_process(tmp_path: Path) -> None:
    broker = LocalBroker(tmp_path / "b", port=free_port_block(2))
    bootstrap = broker.start()
    try:
        assert bootstrap == f"127.0.0.1:{broker.port}"
        assert [s.running for s in broker.status()] == [True]
        assert (tmp_path / "b" / "node-1" / "server.properties").read_text().count(
            f"PLAINTEXT://127.0.0.1:{broker.port}"
        ) == 2
        again = LocalBroker(tmp_path / "b", port=broker.port)
        with pytest.raises(BrokerAlreadyRunningError, match=str(tmp_path / "b")):
            again.start()
    finally:
        broker.stop()
    assert [s.running for s in broker.status()] == [False]
    assert _java_processes_using(tmp_path / "b") == []


def test_port_in_use_is_named(tmp_path: Path) -> None:
    port = free_port_block(2)
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", port + 1))  # the controller port
        holder.listen()
        with pytest.raises(PortInUseError, match=f"port {port + 1}") as info:
            LocalBroker(tmp_path / "b", port=port).start()
    assert info.value.port == port + 1
    assert _java_processes_using(tmp_path / "b") == []


def test_start_timeout_shows_log_tail_and_leaves_nothing(tmp_path: Path) -> None:
    broker = LocalBroker(tmp_path / "b", port=free_port_block(2))
    with pytest.raises(BrokerStartTimeout, match="did not answer a metadata request") as info:
        broker.start(timeout=0.2)
    assert "server.log" in str(info.value)
    assert _java_processes_using(tmp_path / "b") == []


def test_cli_reports_error_with_exit_status_2(tmp_path: Path) -> None:
    port = free_port_block(2)
    env = subprocess_env(EVSTATE_BROKER_DIR=str(tmp_path / "cli"))
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", port))
        holder.listen()
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "evstate.cli",
                "broker",
                "start",
                "--detach",
                "--port",
                str(port),
            ],
            capture_output=True,
            text=True,
            env=env,
            timeout=120,
            check=False,
        )
    assert proc.returncode == 2
    assert f"port {port} on 127.0.0.1 is already in use" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_probe_of_a_closed_port_raises_and_logs_nothing(caplog: pytest.LogCaptureFixture) -> None:
    port = free_port_block(1)
    names = ("aiokafka", "aiokafka.conn")
    before = {n: list(logging.getLogger(n).filters) for n in names}
    with caplog.at_level(logging.DEBUG), pytest.raises(BrokerUnavailableError) as info:
        _probe(f"127.0.0.1:{port}", 1.0)
    assert f"127.0.0.1:{port}" in str(info.value)
    assert [r.getMessage() for r in caplog.records if r.name.startswith("aiokafka")] == []
    # The probe's filter is gone afterwards: aiokafka's own logging is not silenced for good.
    assert {n: list(logging.getLogger(n).filters) for n in names} == before


def test_cli_start_prints_the_address_without_aiokafka_noise(tmp_path: Path) -> None:
    port = free_port_block(2)
    data_dir = tmp_path / "cli-start"

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "evstate.cli", "broker", *args, "--data-dir", str(data_dir)],
            capture_output=True,
            text=True,
            timeout=180,
            check=False,
            env=subprocess_env(),
        )

    started = cli("start", "--detach", "--port", str(port))
    try:
        assert started.returncode == 0, started.stderr
        assert f"127.0.0.1:{port}" in started.stdout
        assert "Unable connect" not in started.stdout + started.stderr
    finally:
        stopped = cli("stop")
    assert stopped.returncode == 0, stopped.stderr
    assert _java_processes_using(data_dir) == []
