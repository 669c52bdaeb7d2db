"""Readers held behind a transaction left open: noticing it, and having it aborted.

A writer killed between producing and committing leaves a transaction that holds a
record: the partition's last stable offset stops there until the broker aborts it
(``transaction_timeout`` plus its abort check's interval). A reader waiting for more of
that partition would wait as long. :class:`HeldPartitions` is told, as the reader waits,
where the view is and where the partition's last stable offset is; once one transaction
has held the partition for a short grace (a live writer commits in milliseconds), it
asks ``release`` (the engine's: register the partition's transactional id, which aborts
what its previous user left open) to end it, in the background.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable

from evstate.config import Settings

__all__ = ["LOOK_EVERY", "HeldPartitions", "Release"]

log = logging.getLogger(__name__)

LOOK_EVERY = 0.25
"""Seconds between a waiting reader's looks at whether its partition is held."""

# Seconds a transaction may hold a partition before it is taken for dead (at most a
# third of read_timeout, so a reader asks before it gives up).
_GRACE = 2.0

Release = Callable[[int], Awaitable[bool]]
"""Aborts whatever transaction evstate's writers left open in a partition (by registering
the partition's transactional id); False if it left it alone (this process's own commit
is in flight there); raises (an EvstateError, logged) if it cannot."""


class HeldPartitions:
    """Which partitions an open transaction holds, per waiting reader's look.

    A release is asked at most once per partition and ``transaction_timeout``, so a live
    writer slower than the grace is fenced once, not over and over.
    """

    def __init__(self, settings: Settings, release: Release | None) -> None:
        """Args:
        settings: ``read_timeout``, ``transaction_timeout`` and the topic (for the log).
        release: what aborts a partition's open transaction; None: only report it.
        """
        self._settings = settings
        self._release = release
        # partition -> (the offset an open transaction holds it at, since when: monotonic)
        self._held: dict[int, tuple[int, float]] = {}
        self._asked: dict[int, float] = {}  # partition -> when release was last asked
        self._tasks: set[asyncio.Task[None]] = set()

    def look(self, partition: int, applied: int, stable: int | None) -> int | None:
        """The offset at which an open transaction holds ``partition``, if one does.

        Args:
            partition: the partition a reader waits for (it needs more than ``applied``).
            applied: the view's position there.
            stable: the partition's last stable offset as last fetched (None: unknown).

        The view then sits at the last stable offset: the transaction's first record is
        there, and nothing after it can be read until the transaction ends.
        """
        if stable is None or stable != applied:
            self._held.pop(partition, None)
            return None
        now = time.monotonic()
        at, since = self._held.get(partition, (stable, now))
        if at != stable:
            since = now
        self._held[partition] = (stable, since)
        grace = min(_GRACE, self._settings.read_timeout / 3)
        last = self._asked.get(partition)
        quiet = last is None or now - last >= self._settings.transaction_timeout
        if self._release is not None and now - since >= grace and quiet:
            self._asked[partition] = now
            task = asyncio.create_task(self._abort(self._release, partition, stable, now - since))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return stable

    async def stop(self) -> None:
        """Cancel releases still under way."""
        for task in list(self._tasks):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _abort(self, release: Release, partition: int, offset: int, held: float) -> None:
        topic = self._settings.state_topic
        try:
            if not await release(partition):
                return
        except Exception as exc:  # best effort, in the background: say why, never raise
            log.warning(
                "partition %d of %s is held at offset %d by a transaction open for %.1f s "
                "(a writer that stopped mid-write?); aborting it failed: %s. The broker "
                "aborts it within its transaction timeout",
                partition,
                topic,
                offset,
                held,
                exc,
            )
            return
        log.info(
            "partition %d of %s was held at offset %d by a transaction open for %.1f s (a "
            "writer that stopped mid-write?): registered the partition's transactional id, "
            "which aborts it",
            partition,
            topic,
            offset,
            held,
        )
