"""A writer that keeps many writes in flight and prints each acknowledged one.

Args (argv): bootstrap, topic prefix, view dir. Runs until killed; each line on stdout is
``key event_id`` of a write Kafka acknowledged (its transaction committed).
"""

from __future__ import annotations

import asyncio
import sys

from evstate import EvstateClient, Scope, State


async def main() -> None:
    bootstrap, prefix, view_dir = sys.argv[1:4]
    async with EvstateClient(
        bootstrap_servers=bootstrap, view_dir=view_dir, topic_prefix=prefix
    ) as client:
        scopes = [Scope("app", f"s{i}") for i in range(4)]
        await client.store(scopes[0]).init()
        print("ready", flush=True)
        n = 0

        async def one(i: int) -> None:
            scope = scopes[i % 4]
            key = f"k{i % 50}"
            state = State(
                status="created",
                kind="k",
                id=key,
                fqn=f"{scope.path}/{key}",
                seq=i,
                data={},
                props={"i": i},
                output={},
            )
            pos = await client.store(scope).set(key, state)
            print(f"{scope.path} {key} {i} {pos.token}", flush=True)

        while True:
            await asyncio.gather(*(one(n + j) for j in range(16)))
            n += 16


asyncio.run(main())
