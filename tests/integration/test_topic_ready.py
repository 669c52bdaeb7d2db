"""A topic evstate creates is served at once: no partition answers "not leader" to the
first reader, and nothing of aiokafka's retrying reaches a user's terminal."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from aiokafka import AIOKafkaClient
from aiokafka.protocol.offset import OffsetRequest

from evstate import Settings, State
from evstate.alchemy.fs import write_state
from evstate.kafka import Admin, TopicSpec
from tests._util import run_cli, subprocess_env

# A program as a user writes it: no logging set up, so Python prints WARNING and above
# of any library to stderr. history=False: one topic, read right after it is created.
PROGRAM = """
import asyncio, sys, tempfile
from evstate import EvstateClient, Scope, State

async def main() -> None:
    async with EvstateClient(view_dir=tempfile.mkdtemp(), history=False) as client:
        store = client.store(Scope("app", "dev"))
        await store.init()
        await store.set("k", State(status="created", kind="t", id="k", fqn="app/dev/k",
                                   seq=1, data={}, props={}, output={}))
        print(await store.list())

asyncio.run(main())
"""


async def test_every_partition_is_served_once_the_topic_exists(
    bootstrap_servers: str, topic_prefix: str
) -> None:
    settings = Settings(bootstrap_servers=bootstrap_servers, topic_prefix=topic_prefix)
    spec = TopicSpec(f"{topic_prefix}.ready", 12, None, {"cleanup.policy": "compact"})
    probe = AIOKafkaClient(bootstrap_servers=bootstrap_servers)
    await probe.bootstrap()  # connected before the topic exists: it asks the moment after
    admin = Admin(settings)
    await admin.start()
    try:
        await admin.ensure_topic(spec)
        request = OffsetRequest(-1, 1, [(spec.name, [(p, -1) for p in range(12)])])
        served: set[int] = set()
        for broker in probe.cluster.brokers():  # the leader of each partition answers 0
            response = await probe.send(broker.nodeId, request)
            served |= {p for _, answers in response.topics for p, code, *_ in answers if not code}
        assert served == set(range(12))
    finally:
        await admin.stop()
        await probe.close()


def test_a_program_creating_topics_prints_nothing_on_stderr(
    bootstrap_servers: str, topic_prefix: str, tmp_path: Path
) -> None:
    for run in range(3):  # the race it guards against was seen on most runs
        proc = subprocess.run(
            [sys.executable, "-c", PROGRAM],
            env=subprocess_env(
                bootstrap_servers=bootstrap_servers, topic_prefix=f"{topic_prefix}-{run}"
            ),
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.strip() == "['k']"
        assert proc.stderr == "", proc.stderr


async def test_a_cli_run_creating_topics_prints_no_retry_chatter(
    bootstrap_servers: str, topic_prefix: str, tmp_path: Path
) -> None:
    state = State(
        status="created", kind="t", id="k", fqn="app/dev/k", seq=1, data={}, props={}, output={}
    )
    write_state(tmp_path / "project", ("app", "dev"), "k", state.to_json())
    env = subprocess_env(
        bootstrap_servers=bootstrap_servers, topic_prefix=topic_prefix, view_dir=tmp_path / "v"
    )
    proc = await run_cli("import-alchemy", str(tmp_path / "project"), env=env)
    assert proc.returncode == 0, proc.stderr
    for needle in ("NotLeader", "Failed fetch offsets", "aiokafka", "Error 6"):
        assert needle not in proc.stdout + proc.stderr
