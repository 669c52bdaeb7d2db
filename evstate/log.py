"""The Kafka adapter: the only module that imports aiokafka.

Producer, consumer and admin wrappers live here, and so does error translation: no
aiokafka exception leaves this module; each is re-raised as an :mod:`evstate.errors` class
``from`` the original.
"""

from __future__ import annotations

import asyncio

from aiokafka import AIOKafkaClient
from aiokafka.errors import KafkaError as _AioKafkaError

from evstate.errors import BrokerUnavailableError


async def count_brokers(bootstrap_servers: str, *, timeout: float = 5.0) -> int:
    """Ask the cluster for its metadata and return how many brokers it lists.

    Args:
        bootstrap_servers: ``host:port[,host:port...]``.
        timeout: seconds to wait for an answer.

    Raises:
        BrokerUnavailableError: nothing answered a metadata request in time.
    """
    client = AIOKafkaClient(
        bootstrap_servers=bootstrap_servers,
        request_timeout_ms=max(1000, int(timeout * 1000)),
        client_id="evstate-probe",
    )
    try:
        await asyncio.wait_for(client.bootstrap(), timeout)
        return len(client.cluster.brokers())
    except (TimeoutError, _AioKafkaError, OSError) as exc:
        raise BrokerUnavailableError(
            f"no Kafka broker answered at {bootstrap_servers} within {timeout:g}s",
            bootstrap_servers=bootstrap_servers,
        ) from exc
    finally:
        await client.close()
