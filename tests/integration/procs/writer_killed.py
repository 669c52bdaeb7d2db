"""A writer that SIGKILLs itself right after Kafka acknowledged its last write.

Args (argv): bootstrap, topic prefix, view dir, count. The view has had no chance to
apply the last write when the process dies.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys

from evstate import EvstateClient, Scope, State


async def main() -> None:
    bootstrap, prefix, view_dir, count = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    client = EvstateClient(bootstrap_servers=bootstrap, view_dir=view_dir, topic_prefix=prefix)
    await client.start()
    store = client.store(Scope("app", "prod"))
    await store.init()
    for i in range(count):
        key = f"r{i}"
        state = State(
            status="created",
            kind="k",
            id=key,
            fqn=f"app/prod/{key}",
            seq=1,
            data={},
            props={"i": i},
            output={},
        )
        pos = await store.set(key, state)
    print(pos.token, flush=True)
    os.kill(os.getpid(), signal.SIGKILL)


asyncio.run(main())
