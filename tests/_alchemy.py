"""Run Node scripts against the real Alchemy from npm (``alchemy@0.94.0``).

The package is installed once into a cache dir (``$EVSTATE_NPM_CACHE`` or
``~/.cache/evstate/npm``) with ``npm install --prefix``; later runs reuse it. Scripts live in
``tests/node/`` and are copied next to the cache's ``node_modules`` before they run, so a
bare ``import "alchemy"`` resolves there (ES modules ignore ``NODE_PATH``).

Tests that use this need Node.js and npm; without them they fail, loudly, rather than skip.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

from tests._util import npm_install_once, subprocess_env

ALCHEMY_VERSION = "0.94.0"
NODE_SCRIPTS = Path(__file__).parent / "node"
CLIENT = Path(__file__).resolve().parents[1] / "clients" / "alchemy"


def cache_dir() -> Path:
    """Where ``alchemy@ALCHEMY_VERSION`` is (or will be) installed."""
    root = os.environ.get("EVSTATE_NPM_CACHE") or os.path.expanduser("~/.cache/evstate/npm")
    return Path(root) / f"alchemy-{ALCHEMY_VERSION}"


def _installed(prefix: Path) -> bool:
    manifest = prefix / "node_modules" / "alchemy" / "package.json"
    try:
        return bool(json.loads(manifest.read_text())["version"] == ALCHEMY_VERSION)
    except (OSError, ValueError, KeyError):
        return False


def ensure_alchemy() -> Path:
    """Install ``alchemy@ALCHEMY_VERSION`` into the cache unless it is there; return the dir.

    A file lock keeps two test processes from installing into the same dir at once.
    """
    for tool in ("node", "npm"):
        if shutil.which(tool) is None:
            raise RuntimeError(f"{tool} is not on PATH; the Alchemy interop tests need Node.js")
    return npm_install_once(cache_dir(), [f"alchemy@{ALCHEMY_VERSION}"], _installed, timeout=600)


def run_node(
    script: str,
    *args: str,
    stdin: Any = None,
    cwd: Path | None = None,
    timeout: float = 120.0,
) -> Any:
    """Run ``tests/node/<script>`` with Node against the cached Alchemy.

    Args:
        script: File name in ``tests/node``.
        *args: Command-line arguments.
        stdin: A JSON-able value written to the script's stdin, or ``None``.
        cwd: Working directory.
        timeout: Seconds before the script is killed.

    Returns:
        The script's stdout parsed as JSON (``None`` when it printed nothing).

    Raises:
        RuntimeError: The script failed; the message holds its stderr.
    """
    prefix = ensure_alchemy()
    scripts = prefix / "scripts"
    scripts.mkdir(exist_ok=True)
    target = scripts / script
    shutil.copyfile(NODE_SCRIPTS / script, target)
    # CI machines set CI=true, and Alchemy then refuses to run with its default local state
    # store; writing a local .alchemy folder is exactly what these scripts are for.
    env = subprocess_env(
        ALCHEMY_TELEMETRY_DISABLED="1",
        DO_NOT_TRACK="1",
        NO_COLOR="1",
        ALCHEMY_CI_STATE_STORE_CHECK="false",
    )
    proc = subprocess.run(
        ["node", str(target), *args],
        input=None if stdin is None else json.dumps(stdin),
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=timeout,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"node {script} failed ({proc.returncode}):\n{proc.stderr}")
    return json.loads(proc.stdout) if proc.stdout.strip() else None


def client_project(project: Path) -> Path:
    """Make ``project`` a Node project that uses the npm client, as an app installs it.

    ``node_modules/alchemy`` links to the cached Alchemy, ``node_modules/@evstate/alchemy``
    is a copy of ``clients/alchemy`` (as ``npm install --install-links`` makes it, without
    its own dev install), so the client's ``import "alchemy"`` is the app's own Alchemy.
    Every script of ``tests/node`` is copied in; run them with ``cwd=project``.
    """
    prefix = ensure_alchemy()
    modules = project / "node_modules"
    (modules / "@evstate").mkdir(parents=True)
    (modules / "alchemy").symlink_to(prefix / "node_modules" / "alchemy")
    shutil.copytree(
        CLIENT, modules / "@evstate" / "alchemy", ignore=shutil.ignore_patterns("node_modules")
    )
    for script in NODE_SCRIPTS.glob("*.mjs"):
        shutil.copy(script, project / script.name)
    return project
