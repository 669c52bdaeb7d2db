"""The console's one watcher: an index of last changes, and changes pushed to browsers.

One :class:`LiveHub` per server reads every event of the history topic from the earliest
on, through one ``client.watch(None, start="earliest")``, whatever the number of open
tabs. It keeps, per resource and per scope, the last event it saw (what the tables show
as "last changed, by whom"), and hands each new event to the browsers subscribed to its
scope or resource (Server-Sent Events, :mod:`evstate.serve.ui.routes`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from evstate.client import EvstateClient
from evstate.errors import EvstateError
from evstate.model import ChangeEvent
from evstate.serve.protocol import Refused
from evstate.serve.ui.shape import LastChange

log = logging.getLogger(__name__)

_QUEUE = 256
_RETRY = 2.0
_QUIET = 0.5


@dataclass(frozen=True, slots=True)
class Subscription:
    """What one browser tab follows: a scope (``key`` None) or one resource."""

    scope: str
    key: str | None
    queue: asyncio.Queue[ChangeEvent | None]

    def wants(self, path: str, key: str) -> bool:
        return path == self.scope and (self.key is None or key == self.key)


class LiveHub:
    """Reads every event once and fans it out; holds the last-change index.

    ``start`` begins reading once ``ready`` returns the server's open client; ``close``
    ends the reader and every subscriber's stream (so a server stops without waiting
    for open tabs).
    """

    def __init__(self, ready: Callable[[], Awaitable[EvstateClient]]) -> None:
        self._ready = ready
        self._task: asyncio.Task[None] | None = None
        self._subscribers: set[Subscription] = set()
        self.keys: dict[tuple[str, str], LastChange] = {}
        self.scopes: dict[str, LastChange] = {}
        self.seen = 0
        self.closed = False
        self._warm = asyncio.Event()
        self._since = datetime.now(UTC)
        self._watching = False
        self._quiet_from = 0.0
        self._upto: dict[int, int] = {}

    def start(self) -> None:
        """Start reading in the background (idempotent)."""
        if self._task is None and not self.closed:
            self._task = asyncio.create_task(self._run(), name="evstate-console-live")

    async def _run(self) -> None:
        while not self.closed:
            try:
                client = await self._ready()
                async with client.watch(None, start="earliest") as changes:
                    self._since = datetime.now(UTC)
                    self._quiet_from = asyncio.get_running_loop().time()
                    self._watching = True
                    async for event in changes:
                        self._note(event)
                        self._quiet_from = asyncio.get_running_loop().time()
            except asyncio.CancelledError:
                raise
            except (EvstateError, Refused) as exc:  # Kafka down: the server says so already
                log.warning("evstate console: live feed stopped (%s); again in %gs", exc, _RETRY)
            except Exception:
                log.exception("evstate console: live feed failed; again in %gs", _RETRY)
            finally:
                self._watching = False
            await asyncio.sleep(_RETRY)

    async def warm(self, timeout: float = 3.0) -> bool:
        """Wait (up to ``timeout`` seconds, once) until the index holds the history.

        The watcher does not say where the backlog ends, so the index counts as warm once
        it yields an event written after it started, or once it has been quiet for half
        a second. Pages read after that show every resource's last change.

        Returns:
            Whether the index is warm.
        """
        self.start()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not self._warm.is_set() and loop.time() < deadline and not self.closed:
            if self._watching and loop.time() - self._quiet_from > _QUIET:
                self._warm.set()
                break
            await asyncio.sleep(0.05)
        return self._warm.is_set()

    def _note(self, event: ChangeEvent) -> None:
        self.seen += 1
        if event.timestamp >= self._since:
            self._warm.set()
        path = "/".join(event.scope)
        last = LastChange(event.op, event.version, event.timestamp, event.actor)
        if event.key:
            self.keys[(path, event.key)] = last
        self.scopes[path] = last
        position = event.position
        if position is not None:
            # A feed started again reads from the earliest: browsers saw those already.
            if position.offset <= self._upto.get(position.partition, -1):
                return
            self._upto[position.partition] = position.offset
        if not self._warm.is_set():
            return  # the backlog: the history, not news
        for sub in self._subscribers:
            if sub.wants(path, event.key):
                with contextlib.suppress(asyncio.QueueFull):  # a stuck tab misses events
                    sub.queue.put_nowait(event)

    def subscribe(self, scope: str, key: str | None) -> Subscription:
        """Follow a scope or one resource; :meth:`unsubscribe` when the tab leaves."""
        self.start()
        sub = Subscription(scope, key, asyncio.Queue(_QUEUE))
        if self.closed:
            _end(sub.queue)
        self._subscribers.add(sub)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        self._subscribers.discard(sub)

    async def close(self) -> None:
        """Stop reading; every subscriber gets ``None`` (end of stream). Idempotent."""
        self.closed = True
        for sub in self._subscribers:
            _end(sub.queue)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


def _end(queue: asyncio.Queue[ChangeEvent | None]) -> None:
    """Put the end of stream, dropping the oldest event if the queue is full."""
    while True:
        try:
            queue.put_nowait(None)
            return
        except asyncio.QueueFull:
            queue.get_nowait()
