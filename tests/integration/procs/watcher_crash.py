"""A group watcher whose handler fails on the Nth event it receives, then (maybe) a clean run.

Args (argv): bootstrap, topic prefix, group, log file, crash_at (0: never), mode, idle.
Each received event is logged as ``got <event_id>``, and once handled as
``done <event_id>``. On the ``crash_at``-th event, mode ``kill`` SIGKILLs the process
(nothing closed, nothing committed on the way out), mode ``raise`` raises from the loop
(the watcher is closed by ``async with``). Without a crash it exits 0 after ``idle``
seconds without an event.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from typing import TextIO

from evstate import EvstateClient


class HandlerFailed(Exception):
    pass


async def main(log: TextIO) -> None:
    bootstrap, prefix, group = sys.argv[1:4]
    crash_at, mode, idle = int(sys.argv[5]), sys.argv[6], float(sys.argv[7])
    client = EvstateClient(bootstrap_servers=bootstrap, topic_prefix=prefix)
    async with client.watch("app", group=group, start="earliest") as events:
        print("ready", flush=True)
        received = 0
        while True:
            try:
                async with asyncio.timeout(idle):
                    event = await anext(events)
            except TimeoutError:
                return
            received += 1
            log.write(f"got {event.event_id}\n")
            log.flush()
            if received == crash_at:
                if mode == "kill":
                    os.kill(os.getpid(), signal.SIGKILL)
                raise HandlerFailed(f"handler failed on {event.event_id}")
            log.write(f"done {event.event_id}\n")
            log.flush()


with open(sys.argv[4], "a", encoding="utf-8") as handle:
    asyncio.run(main(handle))
