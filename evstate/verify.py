"""``evstate verify``: recompute the state from the topic and compare it with the view."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from evstate.applier import ApplierStats, Poison, to_changes
from evstate.engine import Engine
from evstate.kafka import Tail

__all__ = ["Difference", "VerifyReport", "verify"]


@dataclass(frozen=True, slots=True)
class Difference:
    """One key on which the view and the topic disagree."""

    key: str
    problem: Literal["missing from view", "not in topic", "different value"]


@dataclass(slots=True)
class VerifyReport:
    """What ``verify`` found: keys that differ, and records the view had to skip."""

    keys: int
    differences: list[Difference]
    poison: list[Poison]

    @property
    def ok(self) -> bool:
        """True when the view matches the topic (skipped poison records are reported, not
        counted as a mismatch: the topic itself holds them)."""
        return not self.differences


async def verify(engine: Engine) -> VerifyReport:
    """Recompute the state from the topic and compare it with ``engine``'s view, key by key.

    The applier is held still while comparing, then resumes.

    Returns:
        The differences (none when the view is right) and the unreadable records.
    """
    await engine.catch_up()
    applier = engine.applier
    if applier is None:
        return VerifyReport(0, [], [])
    await applier.stop()  # hold the view still while comparing
    try:
        upto = engine.view.applied_offsets()
        expected: dict[bytes, bytes | None] = {}
        tail = Tail(engine.settings, engine.settings.state_topic, applier.partitions)
        await tail.start({})
        try:
            stats = ApplierStats(engine.settings.state_topic)
            while True:
                positions = await tail.positions()
                if all(positions[p] >= upto.get(p, 0) for p in positions):
                    break
                for p, records in (await tail.fetch(0.5)).items():
                    wanted = [r for r in records if r.offset < upto.get(p, 0)]
                    expected.update(to_changes(wanted, stats, report=False))
        finally:
            await tail.stop()
        found = dict(engine.view.scan_prefix(b""))
    finally:
        await applier.start()
    diffs: list[Difference] = []
    for key, value in expected.items():
        have = found.pop(key, None)
        if value is None and have is not None:
            diffs.append(Difference(key.decode(), "not in topic"))
        elif value is not None and have is None:
            diffs.append(Difference(key.decode(), "missing from view"))
        elif value != have:
            diffs.append(Difference(key.decode(), "different value"))
    diffs.extend(Difference(key.decode(), "not in topic") for key in found)
    live = sum(1 for value in expected.values() if value is not None)
    return VerifyReport(live, sorted(diffs, key=lambda d: d.key), stats.poison)
