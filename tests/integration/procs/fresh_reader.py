"""A process started after others wrote: reads, deletes and writes with default consistency.

Args (argv): bootstrap, topic prefix, view dir (fresh), scope path, last key, key to update.
Prints one JSON object: what it read right after start, and the version its update got.
"""

from __future__ import annotations

import asyncio
import json
import sys
from dataclasses import replace

from evstate import EvstateClient, Scope


async def main() -> None:
    bootstrap, prefix, view_dir, scope_path, last, update = sys.argv[1:7]
    scope = Scope.parse(scope_path)
    async with EvstateClient(
        bootstrap_servers=bootstrap, view_dir=view_dir, topic_prefix=prefix
    ) as client:
        store = client.store(scope)
        # No init, no consistency argument: exactly what a fresh CI job would do.
        found = await store.get(last)
        count = await store.count()
        listed = len(await store.list())
        await store.delete(last)
        before = await store.get(update)
        assert before is not None
        await store.set(update, replace(before, output={}, seq=before.seq + 1))
        version = await store.version(update)
        print(
            json.dumps(
                {"found": found is not None, "count": count, "listed": listed, "version": version}
            ),
            flush=True,
        )


asyncio.run(main())
