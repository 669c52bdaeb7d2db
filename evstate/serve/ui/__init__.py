"""The audit console of ``evstate serve``, under ``/ui/``: scopes, resources, history in
deploys, time travel, live changes, locks; server-rendered HTML (Jinja2). It signs in
with the API's principals and shows each only what its grants let it read.

:mod:`~evstate.serve.ui.routes` (the application, sign-in, live events),
:mod:`~evstate.serve.ui.pages` (the pages), :mod:`~evstate.serve.ui.shape` (what the pages
show, as pure functions; secrets masked there), :mod:`~evstate.serve.ui.sessions`
(signed cookies, CSRF), :mod:`~evstate.serve.ui.live` (the one watcher),
:mod:`~evstate.serve.ui.context` (shared state, rendering).
"""

from evstate.serve.ui.context import PREFIX
from evstate.serve.ui.routes import console_app

__all__ = ["PREFIX", "console_app"]
