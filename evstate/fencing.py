"""The partitions' transactional ids: one per partition, shared by every evstate process.

Registering a partition's id (InitProducerId) fences whichever process used it before: the
broker aborts that process's open transaction and refuses its later commits. The writer's
sequencers register it before deciding anything (:mod:`evstate.writer`); a reader held
behind a dead writer's open transaction registers it to have that aborted
(:func:`release`, called through :mod:`evstate.held`).
"""

from __future__ import annotations

from evstate.config import Settings
from evstate.kafka import DEFAULT_MAX_MESSAGE_BYTES, TransactionalProducer

__all__ = ["lane_id", "release", "transactional_base"]


def transactional_base(settings: Settings) -> str:
    """The prefix of the sequencers' transactional ids: the setting, or ``evstate-{prefix}``.

    Every process writing to the same topics must use the same base: the shared ids are
    what lets Kafka fence all but one writer of a partition.
    """
    return settings.transactional_id or f"evstate-{settings.topic_prefix}"


def lane_id(settings: Settings, partition: int) -> str:
    """The transactional id of ``partition``'s sequencer, the same in every process."""
    return f"{transactional_base(settings)}-p{partition}"


async def release(settings: Settings, partition: int) -> None:
    """Abort the transaction a writer of ``partition`` left open, if any.

    Registering the partition's transactional id makes the broker abort what its previous
    user left open, at once rather than after the transaction timeout; nothing is
    written. A live writer of the partition is fenced by it, as by any other writer: its
    next commit registers again, catches up and decides again.

    Raises:
        WriteFailedError, BrokerUnavailableError: the registration failed (e.g. this
            principal may not use the transactional id).
    """
    lane = TransactionalProducer(
        settings, lane_id(settings, partition), max_request_size=DEFAULT_MAX_MESSAGE_BYTES
    )
    try:
        await lane.start()
    finally:
        await lane.stop()
