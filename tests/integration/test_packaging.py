"""Building evstate's wheel, as ``pip install`` does, prints no deprecation warning, and
the wheel holds the console's templates and static files."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

from tests._util import subprocess_env

ROOT = Path(__file__).resolve().parents[2]


def test_building_the_wheel_prints_no_deprecation_warning(tmp_path: Path) -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--wheel-dir",
            str(tmp_path),
            str(ROOT),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env=subprocess_env(),
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output
    assert "deprecat" not in output.lower(), output
    wheel = next(tmp_path.glob("evstate-*.whl"))
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        metadata = next(n for n in names if n.endswith(".dist-info/METADATA"))
        text = archive.read(metadata).decode()
    assert "License-Expression: Apache-2.0" in text
    # The console's templates and static files are package data (evstate serve runs
    # from an installed wheel, not only from a checkout).
    ui = Path(__file__).resolve().parents[2] / "evstate" / "serve" / "ui"
    for kind in ("templates", "static"):
        for path in (ui / kind).iterdir():
            assert f"evstate/serve/ui/{kind}/{path.name}" in names, path.name
