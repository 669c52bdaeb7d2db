"""A writer that dies mid-write: its transaction holds a record and is never ended.

Args (argv): bootstrap, transactional id, topic, partition, transaction timeout (s).
Begins a transaction under the given id, writes one record to the partition, prints
"open" once the broker has it, then sleeps until killed.
"""

from __future__ import annotations

import asyncio
import sys

from aiokafka import AIOKafkaProducer


async def main() -> None:
    bootstrap, tid, topic, partition, timeout = sys.argv[1:6]
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        transactional_id=tid,
        transaction_timeout_ms=int(float(timeout) * 1000),
    )
    await producer.start()
    await producer.begin_transaction()
    await producer.send_and_wait(
        topic, b"never committed", key=b"app/prod:half-written", partition=int(partition)
    )
    print("open", flush=True)
    await asyncio.sleep(3600)


asyncio.run(main())
