"""``GET /metrics`` of ``evstate serve``, scraped with prometheus_client's own parser after
real traffic: writes, consistency waits, records applied, poison, the view's offsets and
lag, a watcher group's lag and the HTTP requests all move."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiokafka import AIOKafkaProducer
from prometheus_client.parser import text_string_to_metric_families

from evstate import EvstateClient, Scope, Settings, keys
from tests._util import running_server, serve_process, subprocess_env, wait_ready
from tests.contract import make_state
from tests.integration.test_serve_contract import (
    TOKEN,
    HttpStore,
    InvalidInput,
    ServeError,
    server_settings,
)

APP = Scope("metrics-app", "prod")
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> Samples:
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


async def scrape(session: aiohttp.ClientSession, url: str, token: str | None = None) -> Samples:
    headers = {} if token is None else {"Authorization": f"Bearer {token}"}
    async with session.get(url + "metrics", headers=headers) as r:
        assert r.status == 200, await r.text()
        assert r.content_type == "text/plain"
        return parse(await r.text())


@pytest.fixture
def settings(bootstrap_servers: str, topic_prefix: str, view_dir: Path) -> Settings:
    return server_settings(bootstrap_servers, topic_prefix, view_dir)


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def test_metrics_move_with_real_traffic(
    settings: Settings, session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    state, history = settings.state_topic, settings.history_topic
    partition = str(keys.partition_for(APP, settings.partitions))
    async with running_server(settings) as url:
        await wait_ready(url, TOKEN)
        before = await scrape(session, url)  # no token needed
        http = HttpStore(session, url, APP)
        for i in range(5):
            await http.set(f"k{i}", make_state(APP, f"k{i}"))
        assert await http.get("k0") is not None  # a session read: waits for the writes
        with pytest.raises(InvalidInput):
            await http.get("a:b")
        with pytest.raises(ServeError):
            await HttpStore(session, url, APP, token="wrong").list()

        producer = AIOKafkaProducer(bootstrap_servers=settings.bootstrap_servers)
        await producer.start()
        try:  # a poison record, straight into the state topic
            await producer.send_and_wait(
                state, b"\xff not avro", key=b"metrics-app/prod:bad", partition=int(partition)
            )
        finally:
            await producer.stop()
        assert await http.call("count", [], consistency="strong") == 5  # past the poison

        async with (
            EvstateClient(
                bootstrap_servers=settings.bootstrap_servers,
                view_dir=str(tmp_path / "watcher-view"),
                topic_prefix=settings.topic_prefix,
            ) as client,
            client.watch(APP, group="auditors", start="earliest") as changes,
        ):
            await anext(changes)  # one handled, four (and their markers) fetched, pending
            behind = value(
                await scrape(session, url), "evstate_watch_lag", topic=history, group="auditors"
            )
            for _ in range(4):
                await anext(changes)
            with pytest.raises(TimeoutError):  # nothing more: the group catches up
                await asyncio.wait_for(anext(changes), 3)
        after = await scrape(session, url)

    def moved(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert moved("evstate_writes_total", topic=state, outcome="ok") == 5
    assert moved("evstate_write_seconds_count", topic=state) == 5
    assert moved("evstate_write_seconds_sum", topic=state) > 0
    waits = {"topic": state, "consistency": "session", "outcome": "ok"}
    assert moved("evstate_consistency_waits_total", **waits) >= 1
    strong = {**waits, "consistency": "strong"}
    assert moved("evstate_consistency_waits_total", **strong) >= 1
    assert moved("evstate_consistency_wait_seconds_count", topic=state, consistency="strong") >= 1
    assert moved("evstate_view_records_applied_total", topic=state) >= 5
    assert moved("evstate_view_poison_records_total", topic=state) >= 1
    offsets = {"topic": state, "partition": partition}
    assert value(after, "evstate_view_applied_offset", **offsets) >= 11  # 5 txns + poison
    assert value(after, "evstate_view_lag", **offsets) == 0
    assert behind > 0
    assert value(after, "evstate_watch_lag", topic=history, group="auditors") == 0
    assert moved("evstate_http_requests_total", method="POST", status="200") >= 7
    assert moved("evstate_http_requests_total", method="POST", status="400") == 1
    assert moved("evstate_http_requests_total", method="POST", status="401") == 1
    assert moved("evstate_http_requests_total", method="GET", status="200") >= 2


async def test_a_metrics_token_guards_only_the_metrics(
    settings: Settings, session: aiohttp.ClientSession
) -> None:
    async with running_server(settings, metrics_token="scrape-me") as url:
        await wait_ready(url, TOKEN)
        for headers in ({}, {"Authorization": f"Bearer {TOKEN}"}):
            async with session.get(url + "metrics", headers=headers) as r:
                assert r.status == 401
                assert "scrape-me" not in await r.text()
        assert "evstate_http_requests_total" in {
            name for name, _ in await scrape(session, url, token="scrape-me")
        }
        async with session.get(url + "metrics/x") as r:
            assert r.status == 401  # other paths still want the store's token


async def test_cli_serves_metrics_with_its_token(
    settings: Settings, session: aiohttp.ClientSession
) -> None:
    env = subprocess_env(
        bootstrap_servers=settings.bootstrap_servers,
        topic_prefix=settings.topic_prefix,
        view_dir=settings.view_dir,
        EVSTATE_METRICS_TOKEN="from-env",
    )
    async with serve_process(env, token=TOKEN) as url:
        http = HttpStore(session, url, APP)
        await http.set("k", make_state(APP, "k"))
        samples = await scrape(session, url, token="from-env")
        ok = {"topic": settings.state_topic, "outcome": "ok"}
        assert value(samples, "evstate_writes_total", **ok) == 1
        async with session.get(url + "metrics") as r:
            assert r.status == 401
