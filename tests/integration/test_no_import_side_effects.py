"""Importing evstate changes nothing in other libraries (a fresh interpreter checks it).

evstate used to shorten aiokafka's transaction back-off for every producer of the process,
the user's own included. Every tuning is now per instance.
"""

from __future__ import annotations

import subprocess
import sys

PROBE = """
import importlib, pkgutil, sys
import aiokafka, aiokafka.producer.sender, logging

def snapshot():
    found = {}
    for name, module in sorted(sys.modules.items()):
        if name == "aiokafka" or name.startswith("aiokafka."):
            for key, value in vars(module).items():
                if isinstance(value, (int, float, str, bool, type(None))):
                    found[f"{name}.{key}"] = value
    return found

loggers = {n: (l.level, list(l.filters)) for n, l in logging.Logger.manager.loggerDict.items()
           if isinstance(l, logging.Logger)}
before = snapshot()
import evstate
for info in pkgutil.walk_packages(evstate.__path__, "evstate."):
    if not info.name.endswith(".__main__"):  # running a module is not importing it
        importlib.import_module(info.name)
after = snapshot()
changed = sorted(k for k in before if before[k] != after.get(k))
print("changed:", changed)
moved = sorted(n for n, (level, filters) in loggers.items()
               if (logging.getLogger(n).level, logging.getLogger(n).filters) != (level, filters))
print("loggers:", moved)
"""


def test_importing_every_evstate_module_leaves_aiokafka_alone() -> None:
    done = subprocess.run(
        [sys.executable, "-c", PROBE], capture_output=True, text=True, check=False, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert "changed: []" in done.stdout, done.stdout
    assert "loggers: []" in done.stdout, done.stdout
