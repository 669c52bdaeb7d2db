"""React to infrastructure changes: a live Markdown inventory and a webhook notice per change.

A consumer in its own consumer group (``--group``, default ``inventory``) watches every
scope under ``--scope`` (default: all) and, for each change:

1. posts a JSON notice to ``--webhook`` (retried with back-off; receivers dedupe by
   ``event_id``, since a notice may come twice after a crash),
2. updates ``--inventory`` (a Markdown table of every live resource, per scope) and its
   sidecar ``<inventory>.json``, both replaced atomically,
3. asks for the next change — which tells evstate this one is handled.

Delivery is at least once: a crash between 1 and 3 repeats the change after restart.
The sidecar remembers the last offset handled per partition, so a repeated change is
recognised and not applied (or posted) twice once the inventory holds it. Secrets never
leave as plaintext: they show as ``********``.

    EVSTATE_BOOTSTRAP_SERVERS=127.0.0.1:9092 python examples/react_to_changes.py \\
        --webhook https://hooks.example.com/infra --inventory inventory.md --from earliest

``--idle-exit SECONDS`` stops after that long without a change (for cron jobs and
tests); otherwise it runs until Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp

from evstate import ChangeEvent, EvstateClient
from evstate.watch import Start, WatchedEvent

log = logging.getLogger("react_to_changes")

MASK = "********"
RETRIES = 6  # 0.25 s, 0.5 s, ... 8 s: about 16 s before giving up on the webhook


class WebhookDown(Exception):
    """The webhook did not take a notice after every retry; the change stays unhandled."""


def masked(value: Any) -> Any:
    """``value`` with every secret marker (``{"@secret": ...}``) replaced by ``********``."""
    if isinstance(value, dict):
        return MASK if "@secret" in value else {k: masked(v) for k, v in value.items()}
    if isinstance(value, list):
        return [masked(v) for v in value]
    return value


def what_changed(before: dict[str, Any] | None, after: dict[str, Any] | None) -> list[str]:
    """Props that changed, for people: ``["memory: 256 → 512", "+tags"]``."""
    if after is None:
        return ["deleted"]
    if before is None:
        return ["created"]
    changes = []
    for name in sorted(before.keys() | after.keys()):
        if name not in before:
            changes.append(f"+{name}")
        elif name not in after:
            changes.append(f"-{name}")
        elif before[name] != after[name]:
            old, new = (json.dumps(v, sort_keys=True) for v in (before[name], after[name]))
            changes.append(f"{name}: {old} → {new}")
    return changes


class Inventory:
    """Every live resource, by scope, kept in a JSON sidecar and rendered as Markdown."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sidecar = path.with_name(path.name + ".json")
        data = json.loads(self.sidecar.read_text()) if self.sidecar.exists() else {}
        self.resources: dict[str, dict[str, Any]] = data.get("resources", {})
        # partition → last offset applied: a change delivered again is recognised.
        self.offsets: dict[str, int] = data.get("offsets", {})

    def seen(self, event: ChangeEvent) -> bool:
        """Whether ``event`` was applied already (delivered again after a crash)."""
        assert event.position is not None
        return self.offsets.get(str(event.position.partition), -1) >= event.position.offset

    def previous_props(self, event: ChangeEvent) -> dict[str, Any] | None:
        entry = self.resources.get(f"{'/'.join(event.scope)}:{event.key}")
        return None if entry is None else entry["props"]

    def apply(self, event: ChangeEvent) -> None:
        """Record ``event`` and write both files (each replaced atomically)."""
        assert event.position is not None
        where = f"{'/'.join(event.scope)}:{event.key}"
        if event.op == "DELETE" or event.state is None:
            self.resources.pop(where, None)
        else:
            state = event.state
            self.resources[where] = {
                "scope": "/".join(event.scope),
                "id": event.key,
                "kind": state.get("kind"),
                "status": state.get("status"),
                "props": masked(state.get("props") or {}),
                "url": _link(state.get("output") or {}),
                "version": event.version,
                "changed": event.timestamp.astimezone(UTC).isoformat(timespec="seconds"),
                "by": event.actor,
            }
        self.offsets[str(event.position.partition)] = event.position.offset
        sidecar = {"resources": self.resources, "offsets": self.offsets}
        _replace(self.sidecar, json.dumps(sidecar, indent=1, sort_keys=True))
        _replace(self.path, self.markdown())

    def markdown(self) -> str:
        now = datetime.now(UTC).isoformat(timespec="seconds")
        lines = [
            "# Infrastructure inventory",
            "",
            f"{len(self.resources)} live resource(s); updated {now} by react_to_changes.py.",
        ]
        scopes: dict[str, list[dict[str, Any]]] = {}
        for entry in self.resources.values():
            scopes.setdefault(entry["scope"], []).append(entry)
        for scope in sorted(scopes):
            lines += ["", f"## {scope}", ""]
            lines += ["| id | kind | status | version | changed | by | link |"]
            lines += ["| --- | --- | --- | ---: | --- | --- | --- |"]
            for e in sorted(scopes[scope], key=lambda e: e["id"]):
                cells = [e["id"], e["kind"], e["status"], str(e["version"]), e["changed"]]
                cells += [e["by"], e["url"] or ""]
                lines.append("| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |")
        return "\n".join(lines) + "\n"


def _link(output: dict[str, Any]) -> str | None:
    for name in ("url", "functionUrl", "endpoint", "arn"):
        value = output.get(name)
        if isinstance(value, str):
            return value
    return None


def _replace(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` so a reader (or a crash) never sees half a file."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def notice(event: ChangeEvent, before: dict[str, Any] | None) -> dict[str, Any]:
    """The JSON a webhook receives for one change."""
    state = event.state or {}
    after = masked(state.get("props") or {}) if event.op != "DELETE" else None
    return {
        "event_id": event.event_id,
        "op": event.op,
        "scope": "/".join(event.scope),
        "id": event.key,
        "kind": state.get("kind"),
        "status": state.get("status"),
        "version": event.version,
        "actor": event.actor,
        "reason": event.reason,
        "timestamp": event.timestamp.astimezone(UTC).isoformat(timespec="milliseconds"),
        "position": None if event.position is None else event.position.token,
        "changes": what_changed(before, after),
    }


async def post(session: aiohttp.ClientSession, url: str, body: dict[str, Any]) -> None:
    """POST ``body``; retry connection errors and 5xx; a 4xx is logged and dropped.

    Raises:
        WebhookDown: still failing after every retry.
    """
    delay = 0.25
    for attempt in range(1, RETRIES + 1):
        try:
            async with session.post(url, json=body) as response:
                if response.status < 400:
                    return
                if response.status < 500:  # the receiver refuses it: retrying cannot help
                    log.error("webhook refused %s: HTTP %s", body["event_id"], response.status)
                    return
                problem = f"HTTP {response.status}"
        except (aiohttp.ClientError, TimeoutError) as exc:
            problem = repr(exc)
        log.warning("webhook attempt %d/%d failed: %s", attempt, RETRIES, problem)
        if attempt < RETRIES:
            await asyncio.sleep(delay)
            delay *= 2
    raise WebhookDown(f"{url} did not take notice {body['event_id']}: {problem}")


async def run(args: argparse.Namespace) -> int:
    inventory = Inventory(args.inventory)
    start: Start = args.start
    client = EvstateClient()  # settings from EVSTATE_*; the watcher needs no view
    timeout = aiohttp.ClientTimeout(total=10)
    handled = 0
    last: WatchedEvent | None = None
    async with (
        aiohttp.ClientSession(timeout=timeout) as session,
        client.watch(args.scope, group=args.group, start=start) as changes,
    ):
        print(f"watching {args.scope or 'every scope'} as group {args.group}", flush=True)
        while True:
            try:
                async with asyncio.timeout(args.idle_exit):
                    event = last = await anext(changes)
            except TimeoutError:
                log.info("no change for %ss: exiting", args.idle_exit)
                break
            if inventory.seen(event):  # delivered again after a crash: already done
                continue
            await post(session, args.webhook, notice(event, inventory.previous_props(event)))
            inventory.apply(event)
            handled += 1
            print(f"{event.op} {'/'.join(event.scope)}/{event.key} v{event.version}", flush=True)
        if last is not None:  # leaving without asking for the next: say the last is done
            await last.ack()
    print(f"handled {handled} change(s); inventory in {args.inventory}", flush=True)
    return 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--webhook", required=True, help="URL that receives a JSON notice")
    parser.add_argument("--inventory", type=Path, default=Path("inventory.md"))
    parser.add_argument("--scope", help="a scope path: it and its nested scopes (default all)")
    parser.add_argument("--group", default="inventory", help="consumer group id")
    parser.add_argument(
        "--from",
        dest="start",
        choices=("earliest", "latest"),
        default="earliest",
        help="where a new group begins (default earliest: build the whole inventory)",
    )
    parser.add_argument(
        "--idle-exit", type=float, default=None, metavar="SECONDS", help="stop when idle"
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("aiokafka").setLevel(logging.ERROR)
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # SIGTERM ends it like Ctrl-C
    try:
        sys.exit(asyncio.run(run(args)))
    except KeyboardInterrupt:
        sys.exit(0)
    except WebhookDown as exc:
        log.error("%s; the change will be retried on the next run", exc)
        sys.exit(1)


if __name__ == "__main__":
    main()
