"""What ``make test`` needs before it runs: Node.js and npm, and chromium for the console's
browser tests (named when missing, no traceback), and the JavaScript client's hand-written
``index.d.ts`` type-checked by tsc against Alchemy's own types (it fails when the
declarations drift)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests._util import subprocess_env

ROOT = Path(__file__).resolve().parents[2]
CLIENT = ROOT / "clients" / "alchemy"
MAKE = shutil.which("make") or "make"


def make(*targets: str, path: str | None = None) -> subprocess.CompletedProcess[str]:
    env = subprocess_env() if path is None else subprocess_env(PATH=path)
    return subprocess.run(
        [MAKE, "-s", "-C", str(ROOT), *targets],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


@pytest.mark.parametrize(("tools", "missing"), [((), "node npm"), (("node",), "npm")])
def test_make_names_a_missing_node_or_npm(
    tmp_path: Path, tools: tuple[str, ...], missing: str
) -> None:
    for tool in tools:  # a PATH holding only these
        found = shutil.which(tool)
        assert found is not None, f"{tool} is needed on this machine to run the test"
        (tmp_path / tool).symlink_to(found)
    proc = make("tools", path=str(tmp_path))
    assert proc.returncode != 0
    assert "make test needs Node.js 18.17+ and npm" in proc.stderr
    assert f"not on PATH: {missing} (" in proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout


def test_make_names_a_missing_chromium(tmp_path: Path) -> None:
    proc = make("tools", f"CHROMIUM={tmp_path / 'no-chromium'}")
    assert proc.returncode != 0
    assert "make test needs chromium for the console's browser tests" in proc.stderr
    assert "apt-get install chromium" in proc.stderr


def test_make_finds_the_tools_here() -> None:
    proc = make("tools")
    assert proc.returncode == 0, proc.stderr


def test_the_js_client_declarations_type_check() -> None:
    proc = make("js-types")
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_tsc_catches_declarations_that_drift_from_alchemy(tmp_path: Path) -> None:
    assert make("js-types").returncode == 0  # installs clients/alchemy/node_modules
    copy = tmp_path / "client"
    shutil.copytree(CLIENT, copy, ignore=shutil.ignore_patterns("node_modules"))
    (copy / "node_modules").symlink_to(CLIENT / "node_modules")
    declarations = copy / "src" / "index.d.ts"
    text = declarations.read_text()
    assert "count(): Promise<number>;" in text
    declarations.write_text(text.replace("count(): Promise<number>;", "count(): Promise<string>;"))
    proc = subprocess.run(
        ["npm", "run", "--silent", "check-types"],
        cwd=copy,
        env=subprocess_env(PATH=os.environ["PATH"]),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode != 0
    assert "Property 'count' in type 'EvstateStateStore' is not assignable" in proc.stdout
