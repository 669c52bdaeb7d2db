"""Poison records in the state topic: logged once, counted, skipped; the view keeps serving."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from aiokafka import AIOKafkaProducer
from prometheus_client import REGISTRY

from evstate import ChangeEvent, EvstateClient, Position, Scope, events, keys
from tests._guarantees import Guarantee
from tests._util import cli_env, run_cli
from tests.contract import make_state

APP = Scope("app", "prod")

GUARANTEE = Guarantee(
    test="tests/faults/test_poison.py::test_poison_is_skipped_counted_logged_and_verify_reports_it",
    fault="four kinds of poison record written straight into the state topic (not Avro, an "
    "unknown schema fingerprint, a truncated event, a key that is not scope:id) between "
    "two good writes",
    asserted=(
        "the view skips them and keeps serving the writes before and after",
        "each is counted once in `evstate_view_poison_records` and logged once with its position",
        "`verify` (API and CLI) reports each by position and finds the view equal to the topic",
    ),
)


def _poison_records(topic: str) -> list[tuple[str, bytes, bytes, list[tuple[str, bytes]]]]:
    event = ChangeEvent.new(
        op="SET", scope=APP, key="x", state=make_state(APP, "x").to_json(), version=1, actor="t"
    )
    good, headers = events.encode(event)
    return [
        ("not Avro", b"app/prod:garbage", b"\xff\x00 not avro at all", headers),
        ("unknown fingerprint", b"app/prod:unknown", good, [(events.SCHEMA_HEADER, b"\x01" * 8)]),
        ("truncated", b"app/prod:truncated", good[: len(good) // 2], headers),
        ("key not scope:id", b"no-colon-here", good, headers),
    ]


async def test_poison_is_skipped_counted_logged_and_verify_reports_it(
    bootstrap_servers: str, topic_prefix: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="evstate.applier")
    topic = f"{topic_prefix}.state"
    metric = {"topic": topic}
    async with EvstateClient(
        bootstrap_servers=bootstrap_servers, view_dir=str(tmp_path / "v"), topic_prefix=topic_prefix
    ) as client:
        store = client.store(APP)
        await store.set("before", make_state(APP, "before"))
        counted = REGISTRY.get_sample_value("evstate_view_poison_records_total", metric) or 0.0
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap_servers)
        await producer.start()
        try:
            partition = keys.partition_for(APP, 12)
            sent: list[Position] = []
            for _, key, value, headers in _poison_records(topic):
                meta = await producer.send_and_wait(
                    topic, value, key=key, partition=partition, headers=headers
                )
                sent.append(Position(meta.partition, meta.offset))
        finally:
            await producer.stop()
        await store.set("after", make_state(APP, "after"))
        assert await store.get("after") is not None  # still serving, past the poison
        assert sorted(await store.list()) == ["after", "before"]
        assert client.applier is not None
        assert [p.position for p in client.applier.stats.poison] == sent
        after = REGISTRY.get_sample_value("evstate_view_poison_records_total", metric)
        assert after == counted + len(sent)
        logged = [r for r in caplog.records if "skipping unreadable record" in r.getMessage()]
        assert len(logged) == len(sent)  # once each
        assert all(str(pos) in r.getMessage() for pos, r in zip(sent, logged, strict=True))

        report = await client.verify()
        assert report.ok
        assert [p.position for p in report.poison] == sent
    # Once each: the verification above re-read the records without logging them again.
    assert len([r for r in caplog.records if "skipping unreadable" in r.getMessage()]) == 4

    proc = await run_cli("verify", env=cli_env(bootstrap_servers, topic_prefix, tmp_path / "cli"))
    assert proc.returncode == 0, proc.stderr
    assert "view matches topic: 2 keys" in proc.stdout
    for pos in sent:
        assert f"unreadable record at {pos}" in proc.stderr
    GUARANTEE.record(poison_records=len(sent), skipped=len(sent), counted=len(sent))
