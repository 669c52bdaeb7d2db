"""The README's Python examples run, against the real broker."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests._util import subprocess_env

README = Path(__file__).parents[2] / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.DOTALL)
# Whole programs run against the broker; fragments (no asyncio.run) must at least compile.
PROGRAMS = [b for b in BLOCKS if "asyncio.run(" in b]
# What each program prints (by its topic prefix) when it did what it says.
EXPECTED = {
    "readme": "['bucket'] 1 ",
    "readme-locks": "ci-job-7 True",
}
FRAGMENTS = [b for b in BLOCKS if "asyncio.run(" not in b]


def test_readme_has_python_examples() -> None:
    assert PROGRAMS


@pytest.mark.parametrize("code", FRAGMENTS, ids=[f"fragment{i}" for i in range(len(FRAGMENTS))])
def test_readme_fragment_compiles(code: str) -> None:
    body = "\n".join("    " + line for line in code.splitlines())
    compile(f"async def fragment():\n{body}\n", "README.md", "exec")


@pytest.mark.parametrize("code", PROGRAMS, ids=[f"program{i}" for i in range(len(PROGRAMS))])
def test_readme_example_runs(code: str, bootstrap_servers: str, topic_prefix: str) -> None:
    env = subprocess_env(bootstrap_servers=bootstrap_servers)
    found = re.search(r'topic_prefix="(readme[a-z-]*)"', code)
    assert found, "a README program names its topic prefix"
    code = code.replace(found.group(0), f'topic_prefix="{topic_prefix}"')
    proc = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    assert EXPECTED[found.group(1)] in proc.stdout
