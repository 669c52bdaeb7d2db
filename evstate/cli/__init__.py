"""The ``evstate`` command line: one module per command group.

:mod:`~evstate.cli.app` is the app and the broker commands; :mod:`~evstate.cli.store`
(scopes, ls, get, rm, rebuild, verify, and the helpers every command shares),
:mod:`~evstate.cli.history`, :mod:`~evstate.cli.watch`, :mod:`~evstate.cli.serve` and
:mod:`~evstate.cli.alchemy` register theirs on it. ``python -m evstate.cli`` runs it.
"""

from evstate.cli.app import app, main

__all__ = ["app", "main"]
