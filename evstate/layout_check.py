"""Checking a state topic's layout before anything reads or writes it.

:func:`check_layout` runs once per view: before the view's applier starts (so before the
first read or write), it peeks at the state topic (every partition's end, then the first
records of partition 0, over the admin's connections: two requests, no consumer) and
lets :func:`evstate.layout.judge` decide. A topic with this evstate's marker is used; an
empty one gets the marker first; one with records and no marker raises
:class:`~evstate.errors.LayoutError`, naming ``evstate migrate``.

The answer is kept in the view (``evstate.meta``), so a process restarted on the same
view dir asks Kafka nothing. A view that holds offsets but no such answer was filled by
an older evstate, maybe from topics ``evstate migrate`` has rewritten since (their
offsets all changed): it is emptied once and read again.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Final

from evstate import layout
from evstate.config import Settings
from evstate.kafka import Admin, Producer
from evstate.view import View

__all__ = ["check_layout", "write_marker"]

log = logging.getLogger(__name__)

# Bytes of partition 0 looked at for the marker (at least its first batch); enough for a
# second marker written by a process that found the same new topic empty at the same time.
HEAD_BYTES: Final = 64 * 1024


def _meta_name(topic: str) -> bytes:
    return b"layout:" + topic.encode()


async def write_marker(settings: Settings, topic: str) -> None:
    """Append the layout marker to partition 0 of ``topic`` (idempotent producer, acks=all).

    Raises:
        WriteFailedError, BrokerUnavailableError: Kafka did not acknowledge it.
    """
    producer = Producer(settings)
    await producer.start()
    try:
        await producer.send(
            topic, 0, layout.MARKER_KEY, layout.marker_value(), layout.marker_headers()
        )
    finally:
        await producer.stop()


async def check_layout(
    settings: Settings,
    admin: Admin,
    view: View | None,
    *,
    write: bool = False,
    applying: bool = False,
) -> None:
    """Refuse a state topic written with another partition rule; mark an empty one.

    Args:
        settings: the topics and how to reach Kafka.
        admin: a started admin client (its connections are reused).
        view: the view that remembers a good answer; None asks Kafka every time.
        write: write the marker into an empty topic (a writer does, once it has checked
            the topic's settings); without it, an empty topic is left as it is.
        applying: the view is already fed from the topic (it was empty when its applier
            started, so what the view holds came from this topic as it is now); without
            it, a view holding offsets but no answer (an older evstate's) is emptied.

    Raises:
        LayoutError: the topic holds records but no marker (the old rule: run
            ``evstate migrate``), or a marker this evstate does not know.
        BrokerUnavailableError, WriteFailedError: Kafka did not answer.
    """
    topic = settings.state_topic
    name = _meta_name(topic)
    if view is not None and view.meta(name) is not None:
        return
    peek = await admin.peek(topic, 0, max_bytes=HEAD_BYTES)
    if peek is None:  # no topic yet: nothing to check
        return
    if layout.judge(topic, peek.ends, peek.head) is layout.Verdict.EMPTY:
        if not write:
            return
        await write_marker(settings, topic)
    if view is None:
        return
    if view.applied_offsets() and not applying:
        log.warning(
            "the view at %s holds offsets but no record of %s's layout (it was filled by "
            "an older evstate, maybe from topics evstate migrate has rewritten since, or "
            "from other topics): reading the topic again from its start, once",
            view.path,
            topic,
        )
        await asyncio.to_thread(view.clear)
    view.set_meta(name, layout.marker_value())
