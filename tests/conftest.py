"""Shared fixtures: one real Apache Kafka per test run, and a unique topic prefix per test.

The broker is the one named by ``EVSTATE_BOOTSTRAP_SERVERS`` if set; otherwise a broker is
started with ``evstate.broker.LocalBroker`` in a temporary data dir and stopped at the end.
A test that needs a broker never skips: if none can be had, it errors, loudly.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from evstate.broker import LocalBroker
from tests._util import free_port_block


@pytest.fixture(scope="session")
def bootstrap_servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Bootstrap servers of a real single-node broker for the whole test run."""
    given = os.environ.get("EVSTATE_BOOTSTRAP_SERVERS")
    if given:
        yield given
        return
    # Every test makes topics of its own (about 0.5 MB of broker heap each, kept for the
    # run): the default 512 MB heap would be nearly full by the end of the suite.
    broker = LocalBroker(tmp_path_factory.mktemp("broker"), port=free_port_block(2), heap="1536m")
    bootstrap = broker.start()
    try:
        yield bootstrap
    finally:
        broker.stop()


@pytest.fixture(scope="session")
def cluster3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalBroker]:
    """A real three-node cluster (three JVMs, one cluster id) for replication and fault tests."""
    broker = LocalBroker(tmp_path_factory.mktemp("cluster3"), port=free_port_block(6), nodes=3)
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture
def topic_prefix() -> str:
    """A topic prefix no other test uses."""
    return f"t{uuid.uuid4().hex[:12]}"


@pytest.fixture
def view_dir(tmp_path: Path) -> Path:
    """A fresh folder for a RocksDB view."""
    return tmp_path / "view"
