"""Takes a lease and holds it until killed.

Args (argv): bootstrap, topic prefix, view dir, scope path, ttl seconds.
Prints one JSON object with the lease's token once it holds it, then sleeps.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys

from evstate import EvstateClient


async def main() -> None:
    bootstrap, prefix, view_dir, scope_path, ttl = sys.argv[1:6]
    async with EvstateClient(
        bootstrap_servers=bootstrap, view_dir=view_dir, topic_prefix=prefix, actor="holder"
    ) as client:
        lease = await client.lock(scope_path, ttl=float(ttl), info={"pid": os.getpid()})
        print(json.dumps({"token": lease.token}), flush=True)
        await asyncio.sleep(3600)


asyncio.run(main())
