"""Increments one counter with read-version-then-compare-and-set, retrying on conflict.

Args (argv): bootstrap, topic prefix, view dir, scope path, tasks, increments per task.
Prints one JSON object: how many increments it made, and how many conflicts and failed
(retriable, maybe applied) writes it retried.
"""

from __future__ import annotations

import asyncio
import json
import sys

from evstate import ConflictError, EvstateClient, Scope, State
from evstate.errors import WriteFailedError


async def main() -> None:
    bootstrap, prefix, view_dir, scope_path, tasks, each = sys.argv[1:7]
    scope = Scope.parse(scope_path)
    conflicts = 0
    failures = 0
    async with EvstateClient(
        bootstrap_servers=bootstrap, view_dir=view_dir, topic_prefix=prefix
    ) as client:
        store = client.store(scope)

        async def incrementer() -> None:
            nonlocal conflicts, failures
            for _ in range(int(each)):
                while True:
                    version = await store.version("counter", consistency="strong")
                    current = await store.get("counter", consistency="strong")
                    value = current.output["n"] if current is not None else 0
                    state = State(
                        status="updated",
                        kind="counter",
                        id="counter",
                        fqn="counter",
                        seq=1,
                        data={},
                        props={},
                        output={"n": value + 1},
                    )
                    try:
                        await store.set("counter", state, expected_version=version)
                        break
                    except ConflictError:
                        conflicts += 1
                    except WriteFailedError:
                        # Retriable, and maybe applied: reading the version again tells,
                        # and compare-and-set cannot apply the same increment twice.
                        failures += 1

        await asyncio.gather(*(incrementer() for _ in range(int(tasks))))
    report = {"increments": int(tasks) * int(each), "conflicts": conflicts, "failures": failures}
    print(json.dumps(report), flush=True)


asyncio.run(main())
