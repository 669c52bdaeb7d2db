"""What the fault tests guarantee, in words, and what their last run measured.

Each fault test declares a :class:`Guarantee` next to its assertions: the fault, and what
the test asserts, in sentences built from the same constants the assertions use (so a
changed bound changes the sentence). At the end of a passing run the test calls
:meth:`Guarantee.record` with what it measured; ``python -m tests.guarantees`` renders
every declaration and the last measurements into ``docs/guarantees.md``.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

ROOT = Path(__file__).resolve().parents[1]


def results_dir() -> Path:
    """Where measurements go: ``$EVSTATE_GUARANTEES_DIR`` or ``.evstate/guarantees``."""
    return Path(os.environ.get("EVSTATE_GUARANTEES_DIR") or ROOT / ".evstate" / "guarantees")


@dataclass(frozen=True)
class Guarantee:
    """One fault test's promise.

    Attributes:
        test: ``path::function`` of the test, from the repository root.
        fault: what the test does to evstate.
        asserted: what it asserts, one sentence each; the test fails otherwise.
    """

    test: str
    fault: str
    asserted: tuple[str, ...]

    @property
    def key(self) -> str:
        """A file name for this test's measurements."""
        return self.test.replace("/", ".").replace("::", "--")

    def record(self, part: str | None = None, **measured: int | float | str) -> None:
        """Write what this run measured (call it after the assertions passed).

        Args:
            part: for a parametrized test, the case (each case is one file).
            **measured: what to show, in order.
        """
        folder = results_dir()
        folder.mkdir(parents=True, exist_ok=True)
        # A case's name may hold "/" (scope name '/abs'): keep it one file name.
        name = self.key if part is None else f"{self.key}[{quote(part, safe='')}]"
        (folder / f"{name}.json").write_text(
            json.dumps(
                {
                    "test": self.test,
                    "part": part,
                    "measured": measured,
                    "at": datetime.now(UTC).isoformat(timespec="seconds"),
                },
                indent=2,
            )
            + "\n"
        )

    def runs(self) -> list[dict[str, Any]]:
        """The last recorded run (one per case of a parametrized test); [] if none here."""
        folder = results_dir()
        paths = [folder / f"{self.key}.json", *sorted(folder.glob(f"{self.key}[[]*].json"))]
        return [json.loads(p.read_text()) for p in paths if p.exists()]
