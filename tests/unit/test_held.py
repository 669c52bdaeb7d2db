"""HeldPartitions: when a waiting reader's partition counts as held by an open
transaction, and when (and how often) it asks for that transaction to be aborted."""

from __future__ import annotations

import asyncio
import logging

import pytest

from evstate.config import Settings
from evstate.errors import WriteFailedError
from evstate.held import HeldPartitions

# read_timeout 0.3 s: the grace is a third of it, 0.1 s.
SETTINGS = Settings(read_timeout=0.3, transaction_timeout=5.0, topic_prefix="t")


class Releases:
    """A release that records its calls and answers as told."""

    def __init__(self, answer: bool | BaseException = True) -> None:
        self.calls: list[int] = []
        self.answer = answer

    async def __call__(self, partition: int) -> bool:
        self.calls.append(partition)
        if isinstance(self.answer, BaseException):
            raise self.answer
        return self.answer


def test_a_view_short_of_the_last_stable_offset_is_not_held() -> None:
    held = HeldPartitions(SETTINGS, Releases())
    assert held.look(3, applied=7, stable=9) is None  # still reading: not held
    assert held.look(3, applied=7, stable=None) is None  # nothing fetched yet


async def test_a_transaction_is_aborted_once_after_the_grace() -> None:
    release = Releases()
    held = HeldPartitions(SETTINGS, release)
    assert held.look(3, applied=7, stable=7) == 7
    await asyncio.sleep(0)
    assert release.calls == []  # within the grace: a live writer may be committing
    await asyncio.sleep(0.15)
    assert held.look(3, applied=7, stable=7) == 7
    await asyncio.sleep(0)
    assert release.calls == [3]
    await asyncio.sleep(0.15)
    held.look(3, applied=7, stable=7)
    await asyncio.sleep(0)
    assert release.calls == [3]  # once per transaction_timeout, however long it holds
    await held.stop()


async def test_the_grace_starts_again_when_the_held_offset_moves() -> None:
    release = Releases()
    held = HeldPartitions(SETTINGS, release)
    held.look(3, applied=7, stable=7)
    await asyncio.sleep(0.15)
    held.look(3, applied=9, stable=9)  # that one ended; another holds it now
    await asyncio.sleep(0)
    assert release.calls == []
    await held.stop()


async def test_a_failed_abort_is_logged_not_raised(caplog: pytest.LogCaptureFixture) -> None:
    release = Releases(WriteFailedError("not authorized to use the transactional id"))
    held = HeldPartitions(SETTINGS, release)
    held.look(2, applied=5, stable=5)
    await asyncio.sleep(0.15)
    with caplog.at_level(logging.INFO, logger="evstate.held"):
        assert held.look(2, applied=5, stable=5) == 5
        await asyncio.sleep(0.01)
    assert release.calls == [2]
    [record] = caplog.records
    assert record.levelno == logging.WARNING
    assert "held at offset 5" in record.getMessage()
    assert "not authorized" in record.getMessage()
    await held.stop()


async def test_a_release_that_declines_says_nothing(caplog: pytest.LogCaptureFixture) -> None:
    release = Releases(False)  # this process's own commit is in flight there
    held = HeldPartitions(SETTINGS, release)
    held.look(1, applied=4, stable=4)
    await asyncio.sleep(0.15)
    with caplog.at_level(logging.INFO, logger="evstate.held"):
        held.look(1, applied=4, stable=4)
        await asyncio.sleep(0.01)
    assert release.calls == [1]
    assert caplog.records == []
    await held.stop()


def test_without_a_release_it_only_reports() -> None:
    held = HeldPartitions(SETTINGS, None)
    assert held.look(0, applied=1, stable=1) == 1
