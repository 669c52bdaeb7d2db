"""A process that opens a client on a view dir and lets its view catch up (or rebuild).

Args (argv): bootstrap, topic prefix, view dir, mode ("catch-up" or "rebuild").
Prints "applying" once it started, "progress DONE TOTAL" while rebuilding, then "done";
tests SIGKILL it in between.
"""

from __future__ import annotations

import asyncio
import sys

from evstate import EvstateClient


async def main() -> None:
    bootstrap, prefix, view_dir, mode = sys.argv[1:5]
    async with EvstateClient(
        bootstrap_servers=bootstrap, view_dir=view_dir, topic_prefix=prefix
    ) as client:
        print("applying", flush=True)
        if mode == "rebuild":
            await client.rebuild(lambda done, total: print("progress", done, total, flush=True))
        else:
            await client.catch_up()
        print("done", flush=True)


asyncio.run(main())
