"""The server's one EvstateClient, opened in the background with retries, and its
readiness (connected; caught up)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import NoReturn

from evstate.client import EvstateClient
from evstate.config import Settings
from evstate.errors import (
    EvstateError,
)
from evstate.model import Lifecycle
from evstate.serve.protocol import Refused

log = logging.getLogger(__name__)


class Backend:
    """The server's one :class:`EvstateClient`, opened in the background with retries.

    The server listens at once; until Kafka answers and the topics are there, requests
    get 503 with the reason. An error that retrying cannot fix (view locked, a topic
    with the wrong settings) is kept in ``fatal``.
    """

    def __init__(self, settings: Settings) -> None:
        self.client = EvstateClient(settings)
        self.last_error: EvstateError | None = None
        self.fatal: asyncio.Future[EvstateError] = asyncio.get_running_loop().create_future()
        self._opener: asyncio.Task[None] | None = None
        self._ready = False
        self._opened = asyncio.Event()
        # Set once the first attempt to open is over, however it went.
        self.settled = asyncio.Event()

    @property
    def ready(self) -> bool:
        return self._ready and self.client.state is Lifecycle.OPEN

    def start(self) -> None:
        self._opener = asyncio.create_task(self._open(), name="evstate-serve-open")

    async def _open(self) -> None:
        try:
            await self._open_with_retries()
        finally:
            self.settled.set()

    async def _open_with_retries(self) -> None:
        delay = 0.25
        while True:
            try:
                await self.client.start()
                # The server exists to serve the store: create (or check) the topics now,
                # so a bad topic fails at start and reads see other writers at once.
                await self.client.ensure_topics()
            except EvstateError as exc:
                self.last_error = exc
                if not exc.retriable:
                    log.error("evstate serve cannot open its client: %s", exc)
                    self.fatal.set_result(exc)
                    return
                log.warning("evstate serve: %s (retrying in %gs)", exc, delay)
                self.settled.set()
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
            else:
                self.last_error = None
                self._ready = True
                self._opened.set()
                log.info("evstate serve: connected to %s", self.client.settings.bootstrap_servers)
                return

    def check_ready(self) -> None:
        if self.ready:
            return
        self._refuse()

    async def wait_ready(self) -> None:
        """While the first connection is under way (nothing failed yet), wait up to
        ``read_timeout`` for it; then :meth:`check_ready` (503 while Kafka is known down)."""
        if not self._opened.is_set() and self.last_error is None and not self.fatal.done():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    asyncio.shield(self._opened.wait()), self.client.settings.read_timeout
                )
        self.check_ready()

    def check_caught_up(self) -> None:
        """Refuse (503) until the view holds everything committed before the server started."""
        self.check_ready()
        applier = self.client.applier
        behind = applier.behind() if applier is not None else {}
        if behind:
            done = sum(applied for applied, _ in behind.values())
            total = sum(mark for _, mark in behind.values())
            raise Refused(
                503,
                f"evstate serve is catching up with the topic: {done} of {total} offsets read "
                f"in partitions {', '.join(str(p) for p in behind)}",
            )

    def _refuse(self) -> NoReturn:
        reason = (
            str(self.last_error)
            if self.last_error is not None
            else f"connecting to Kafka at {self.client.settings.bootstrap_servers}"
        )
        status = 500 if self.fatal.done() else 503
        raise Refused(status, f"evstate serve is not ready: {reason}")

    async def close(self) -> None:
        if self._opener is not None:
            self._opener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._opener
        await self.client.close()
