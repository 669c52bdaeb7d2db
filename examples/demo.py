"""evstate demo: a small deployment kept as events on a real Apache Kafka.

Creates three resources in a scope, updates one, deletes one, then prints the final
states (read from the local RocksDB view) and every event the deployment produced (read
back from Kafka).

    EVSTATE_BOOTSTRAP_SERVERS=127.0.0.1:9092 python examples/demo.py

``make demo`` starts a broker, runs this, and stops the broker.
"""

from __future__ import annotations

import asyncio
import tempfile
from datetime import UTC, datetime

from rich.console import Console
from rich.table import Table

from evstate import EvstateClient, Scope, State

console = Console()


def resource(scope: Scope, rid: str, kind: str, seq: int, **props: object) -> State:
    """A resource state as Alchemy would record it after creating the resource."""
    return State(
        status="created",
        kind=kind,
        id=rid,
        fqn="/".join((*scope.chain, rid)),
        seq=seq,
        data={},
        props=dict(props),
        output={"arn": f"arn:demo:{kind.split('::')[-1].lower()}:{rid}", **props},
    )


async def deploy(client: EvstateClient, scope: Scope) -> None:
    store = client.store(scope)
    await store.init()
    console.rule(f"deploying into scope [bold]{scope.path}[/]")
    plan = [
        resource(scope, "assets", "aws::Bucket", 1, name="demo-assets", versioning=False),
        resource(scope, "api", "aws::Function", 2, memory=256, runtime="python3.11"),
        resource(scope, "jobs", "aws::Queue", 3, fifo=True),
    ]
    for state in plan:
        pos = await store.set(state.id, state, reason="create")
        console.print(f"  set    {state.id:<8} -> partition {pos.partition}, offset {pos.offset}")
    updated = resource(scope, "api", "aws::Function", 2, memory=512, runtime="python3.11")
    updated.status = "updated"
    updated.old_props = {"memory": 256, "runtime": "python3.11"}
    pos = await store.set("api", updated, reason="scale up")
    console.print(f"  update api      -> partition {pos.partition}, offset {pos.offset}")
    pos = await store.delete("jobs", reason="no longer needed")
    console.print(f"  delete jobs     -> partition {pos.partition}, offset {pos.offset}")

    # Read-your-writes: these reads wait until the view has applied the writes above.
    final = await store.all()
    table = Table(title=f"final states in {scope.path} ({await store.count()} resources)")
    for column in ("id", "kind", "status", "seq", "props"):
        table.add_column(column)
    for rid, state in sorted(final.items()):
        table.add_row(rid, state.kind, state.status, str(state.seq), repr(state.props))
    console.print(table)
    assert sorted(final) == ["api", "assets"]
    assert final["api"].props == {"memory": 512, "runtime": "python3.11"}
    assert await store.get("jobs") is None

    events = Table(title="events produced (read back from Kafka)")
    for column in ("offset", "op", "key", "version", "actor", "reason", "time"):
        events.add_column(column)
    async for event in client.history(scope):
        assert event.position is not None
        events.add_row(
            str(event.position.offset),
            event.op,
            event.key,
            str(event.version),
            event.actor,
            event.reason or "",
            event.timestamp.strftime("%H:%M:%S.%f")[:-3],
        )
    console.print(events)


async def main() -> None:
    stage = datetime.now(UTC).strftime("run-%Y%m%d-%H%M%S")
    with tempfile.TemporaryDirectory(prefix="evstate-demo-view-") as view_dir:
        async with EvstateClient(view_dir=view_dir, topic_prefix="evstate-demo") as client:
            console.print(f"Kafka at {client.settings.bootstrap_servers}; view in {view_dir}")
            await deploy(client, Scope("demo-app", stage))
    console.print("[green]demo finished[/]")


if __name__ == "__main__":
    asyncio.run(main())
