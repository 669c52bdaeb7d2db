"""A reader in another process: answers `strong KEY` and `pos KEY TOKEN` lines on stdin.

Args (argv): bootstrap, topic prefix, view dir, scope path. Prints one JSON line per
command: the state's props, or null.
"""

from __future__ import annotations

import asyncio
import json
import sys

from evstate import EvstateClient, Position, Scope


async def main() -> None:
    bootstrap, prefix, view_dir, scope_path = sys.argv[1:5]
    async with EvstateClient(
        bootstrap_servers=bootstrap, view_dir=view_dir, topic_prefix=prefix
    ) as client:
        store = client.store(Scope.parse(scope_path))
        await store.init()
        print("ready", flush=True)
        loop = asyncio.get_running_loop()
        while line := await loop.run_in_executor(None, sys.stdin.readline):
            words = line.split()
            if words[0] == "strong":
                state = await store.get(words[1], consistency="strong")
            else:
                pos = Position.parse(words[2])
                state = await store.get(words[1], consistency="eventual", min_position=pos)
            print(json.dumps(None if state is None else state.props), flush=True)


asyncio.run(main())
