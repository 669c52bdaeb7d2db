"""The StateStore contract against the Python API (EvstateClient + KafkaStateStore)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from evstate import EvstateClient, Scope
from evstate.errors import ValidationError
from evstate.store import KafkaStateStore
from tests._util import topic_record_count
from tests.contract import OpenStore, RecordsWritten, StoreContract


class TestPythonStore(StoreContract):
    """Default settings: state and history topics written in one transaction."""

    invalid_input = ValidationError
    history = True

    @pytest.fixture
    async def client(
        self, bootstrap_servers: str, topic_prefix: str, view_dir: Path
    ) -> AsyncIterator[EvstateClient]:
        async with EvstateClient(
            bootstrap_servers=bootstrap_servers,
            view_dir=str(view_dir),
            topic_prefix=topic_prefix,
            history=self.history,
        ) as client:
            yield client

    @pytest.fixture
    def open_store(self, client: EvstateClient) -> OpenStore:
        def open_(scope: Scope) -> KafkaStateStore:
            return client.store(scope)

        return open_

    @pytest.fixture
    def records_written(self, bootstrap_servers: str, client: EvstateClient) -> RecordsWritten:
        async def count() -> int:
            return await topic_record_count(bootstrap_servers, client.settings.state_topic)

        return count


class TestPythonStoreWithoutHistory(TestPythonStore):
    """history=False: one idempotent, non-transactional write to the state topic."""

    history = False
