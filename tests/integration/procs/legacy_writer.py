"""evstate as it was before the stage rule: scopes placed by full path, no layout marker.

Real evstate writes (Avro events, one transaction over both topics), with the partition
rule set back to :func:`evstate.keys.legacy_partition_for` and the layout check off, so
the topics end up exactly as an older evstate left them.

Args (argv): bootstrap, topic prefix, view dir, history ("1" or "0").
Prints one JSON object: ``states`` (scope path -> key -> props of the last SET) and
``events`` (scope path -> [[op, key, version], ...] in the order written).
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

import evstate.engine
from evstate import EvstateClient, Scope, State, keys

# Nested scopes: under the old rule most land in another partition than their stage.
SCOPES = [
    Scope("app", "prod"),
    Scope("app", "prod", "db"),
    Scope("app", "prod", "db", "replica"),
    Scope("app", "prod", "net"),
    Scope("app", "dev", "cache"),
    Scope("solo"),
]


async def _no_check(*args: Any, **kwargs: Any) -> None:
    """The layout check did not exist: nothing was checked, no marker written."""


def _state(scope: Scope, key: str, seq: int) -> State:
    return State(
        status="created" if seq == 1 else "updated",
        kind="test::Resource",
        id=key,
        fqn="/".join((*scope.chain, key)),
        seq=seq,
        data={},
        props={"scope": scope.path, "key": key, "seq": seq},
        output={"arn": f"arn:test:{scope.path}:{key}"},
    )


async def main() -> None:
    bootstrap, prefix, view_dir, history = sys.argv[1:5]
    keys.partition_for = keys.legacy_partition_for  # type: ignore[assignment]
    evstate.engine.check_layout = _no_check  # type: ignore[assignment]
    states: dict[str, dict[str, Any]] = {}
    written: dict[str, list[list[Any]]] = {}
    async with EvstateClient(
        bootstrap_servers=bootstrap,
        view_dir=view_dir,
        topic_prefix=prefix,
        history=history == "1",
    ) as client:
        for round_ in (1, 2):
            for scope in SCOPES:
                store = client.store(scope)
                for key in ("k0", "k1", "k2/x"):
                    await store.set(key, _state(scope, key, round_))
                    states.setdefault(scope.path, {})[key] = _state(scope, key, round_).props
                    written.setdefault(scope.path, []).append(["SET", key, round_])
        for scope in SCOPES:
            await client.store(scope).delete("k1")
            del states[scope.path]["k1"]
            written[scope.path].append(["DELETE", "k1", 3])
    print(json.dumps({"states": states, "events": written}), flush=True)


asyncio.run(main())
