"""The console's pages: scopes, a scope (as of now or of a moment, a compare), its
history in deploys, a resource's timeline, and breaking a lock.

Each page is for the signed-in principal: the scopes it may read (the API's check,
:func:`~evstate.serve.ui.context.allowed_scope`: 403 otherwise), and a lock broken only
with the ``admin`` grant on its scope, recorded with the principal as the actor."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

from aiohttp import web

from evstate.client import EvstateClient
from evstate.errors import ValidationError
from evstate.model import LOCK_OPS, Consistency, Lease, Scope, Tree
from evstate.principals import Principal, may
from evstate.serve import audit
from evstate.serve.ui.context import (
    CONSOLE,
    PAGE_SIZE,
    allowed_scope,
    int_param,
    principal_of,
    render,
    required,
    session_of,
    time_param,
    url,
)
from evstate.serve.ui.sessions import Sessions
from evstate.serve.ui.shape import (
    LastChange,
    changes_of,
    deploys,
    field_changes,
    flatten,
    nested_scopes,
    resource_row,
    scope_tree,
    show,
    timeline,
    walk_tree,
)
from evstate.stacks import kind_of

HISTORY_PAGE = 20
"""Deploys per page of a scope's history."""
TIMELINE_PAGE = 50
"""Versions per page of a resource's timeline."""
LIVE_HEADER = "X-Evstate-Live"
"""Sent by the console's script when it refreshes a page after a live event: the page is
then read with ``strong`` consistency, so it holds the event just announced."""


def _consistency(request: web.Request) -> Consistency:
    return "strong" if request.headers.get(LIVE_HEADER) else "session"


def _pages(total: int, size: int, page: int) -> tuple[int, int, int]:
    """(pages, first index, last index) of ``page``; a page past the end is refused."""
    pages = max(1, -(-total // size))
    if page > pages:
        raise ValidationError(f"page {page} is past the last page ({pages})")
    return pages, (page - 1) * size, min(total, page * size)


async def _leases(client: EvstateClient, path: str | None) -> list[Lease]:
    """Live leases on ``path``, covering it or nested in it (all when None), as this
    server's view holds them: at ``session`` consistency (the server's own breaks
    included). ``client.locks`` reads at ``strong``, which asks the broker for the
    partition's end first: about 100 ms a page here, for a table that a live event
    refreshes anyway."""
    if path is not None:
        await client.consistent(Scope.parse(path))
    now = datetime.now(UTC)
    live = (lease for lease in client.engine.leases(path) if lease.live(now))
    return sorted(live, key=lambda lease: lease.scope)


def _holder(leases: list[Lease], path: str) -> Lease | None:
    return next((lease for lease in leases if lease.covers(path)), None)


def _reads(principal: Principal) -> Callable[[str], bool]:
    return lambda path: may(principal, "read", path)


async def scopes_page(request: web.Request) -> web.Response:
    """Every scope with states that the principal may read (and their parents) as a tree,
    with counts, last change and lock holder; ``q`` filters by path. A parent it may not
    read is only the way down: its path, nothing of what it holds."""
    console = request.config_dict[CONSOLE]
    principal = principal_of(request)
    client = await console.client()
    await console.hub.warm()
    await client.catch_up()
    paths = client.scopes()
    leases = await _leases(client, None)  # the view is caught up
    query = request.query.get("q", "").strip()
    roots = scope_tree(paths, _reads(principal))
    info = {}
    for node in walk_tree(roots):
        if not node.readable:
            continue
        count = 0
        if node.has_states:
            count = await client.store(Scope.parse(node.path)).count(consistency="eventual")
        info[node.path] = {
            "count": count,
            "last": console.hub.scopes.get(node.path),
            "lease": _holder(leases, node.path),
        }
    matches = [n for n in walk_tree(roots) if query.casefold() in n.path.casefold()]
    return render(request, "scopes.html", roots=roots, info=info, query=query, matches=matches)


async def scope_page(request: web.Request) -> web.Response:
    """A scope's resources (now, or as of ``at``), nested scopes, locks, and a compare
    of two moments (``from``, ``to``)."""
    console = request.config_dict[CONSOLE]
    principal = principal_of(request)
    scope = allowed_scope(request, required(request, "path"))
    path = scope.path
    page = int_param(request, "page")
    at = time_param(request.query.get("at"), "at")
    start = time_param(request.query.get("from"), "from")
    end = time_param(request.query.get("to"), "to")
    client = await console.client()
    await console.hub.warm()
    store = client.store(scope)
    if at is None:
        ids = await store.list(consistency=_consistency(request))
        pages, first, last = _pages(len(ids), PAGE_SIZE, page)
        shown = ids[first:last]
        trees = await store.get_batch_trees(shown, consistency="eventual")
        versions = {k: await store.version(k, consistency="eventual") for k in trees}
        index = console.hub.keys
    else:
        trees, versions, index = await _as_of(client, scope, at)
        ids = sorted(trees)
        pages, first, last = _pages(len(ids), PAGE_SIZE, page)
        shown = ids[first:last]
    rows = [
        resource_row(k, trees[k], versions.get(k), index.get((path, k)))
        for k in shown
        if k in trees
    ]
    compare = None
    if start is not None and end is not None:
        diff = await client.diff(scope, start, end)
        compare = {
            "added": sorted(diff.added),
            "removed": sorted(diff.removed),
            "changed": [(k, field_changes(a, b)) for k, (a, b) in sorted(diff.changed.items())],
        }
    elif (start is None) != (end is None):
        raise ValidationError("a compare needs both moments: from and to")
    leases = await _leases(client, path)
    return render(
        request,
        "scope.html",
        path=path,
        rows=rows,
        total=len(ids),
        page=page,
        pages=pages,
        at=at,
        start=start,
        end=end,
        compare=compare,
        nested=nested_scopes(path, client.scopes(), _reads(principal)),
        leases=leases,
        breakable={lease.scope for lease in leases if may(principal, "admin", lease.scope)},
        notice=request.query.get("notice"),
        csrf=session_of(request).csrf,
        live_url=url("events", scope=path) if at is None else None,
        now=datetime.now(UTC),
    )


async def _as_of(
    client: EvstateClient, scope: Scope, at: datetime
) -> tuple[dict[str, Tree], dict[str, int], dict[tuple[str, str], LastChange]]:
    """The scope's states as of ``at``, with each one's version and last change then
    (``trees_at`` gives the states alone)."""
    trees: dict[str, Tree] = {}
    versions: dict[str, int] = {}
    lasts: dict[tuple[str, str], LastChange] = {}
    async for event in client.history(scope, until=at):
        if event.op in LOCK_OPS or not event.key:
            continue
        if event.op == "DELETE" or event.state is None:
            trees.pop(event.key, None)
            continue
        trees[event.key] = event.state
        versions[event.key] = event.version
        lasts[(scope.path, event.key)] = LastChange(
            event.op, event.version, event.timestamp, event.actor
        )
    return trees, versions, lasts


async def history_page(request: web.Request) -> web.Response:
    """A scope's changes newest first, grouped into deploys, each with its diffs."""
    console = request.config_dict[CONSOLE]
    scope = allowed_scope(request, required(request, "path"))
    path = scope.path
    page = int_param(request, "page")
    client = await console.client()
    await console.hub.warm()
    groups = deploys(changes_of([event async for event in client.history(scope)]))
    groups.reverse()
    pages, first, last = _pages(len(groups), HISTORY_PAGE, page)
    return render(
        request,
        "history.html",
        path=path,
        groups=groups[first:last],
        total=len(groups),
        page=page,
        pages=pages,
        live_url=url("events", scope=path),
    )


async def resource_page(request: web.Request) -> web.Response:
    """Every version of one resource, newest first, each diffed against the one before."""
    console = request.config_dict[CONSOLE]
    scope = allowed_scope(request, required(request, "scope"))
    path = scope.path
    key = required(request, "key")
    request[audit.KEY] = key
    page = int_param(request, "page")
    client = await console.client()
    await console.hub.warm()
    current = await client.store(scope).get_tree(key, consistency=_consistency(request))
    events = [e async for e in client.history(scope, key) if e.key == key]
    pages, first, last = _pages(len(events), TIMELINE_PAGE, page)
    fields = [(name, show(value)) for name, value in flatten(current).items()] if current else []
    return render(
        request,
        "resource.html",
        path=path,
        key=key,
        current=current,
        kind=kind_of(current) if current else "",
        state_status=str(current.get("status", "")) if current else "",
        fields=fields,
        changes=timeline(events, first, last),
        total=len(events),
        page=page,
        pages=pages,
        live_url=url("events", scope=path, key=key),
    )


async def break_lock(request: web.Request) -> web.StreamResponse:
    """Break a lease, once the form's CSRF token is right, the principal holds the
    ``admin`` grant on its scope (as the API's ``breakLock``) and the scope path was
    typed. The BREAK event's actor is the principal."""
    console = request.config_dict[CONSOLE]
    form = await request.post()
    session = session_of(request)
    principal = principal_of(request)
    csrf = form.get("csrf")
    if not Sessions.csrf_ok(session, csrf if isinstance(csrf, str) else None):
        return render(
            request,
            "error.html",
            403,
            title="Forbidden",
            message="The form is stale or came from elsewhere (CSRF check failed). "
            "Reload the page and try again.",
        )
    path, token, confirm = (str(form.get(name, "")) for name in ("scope", "token", "confirm"))
    scope = allowed_scope(request, path, "admin")
    if not token.isdecimal():
        raise ValidationError(f"the lease token must be a whole number, got {token!r}")
    if confirm != scope.path:
        return render(
            request,
            "error.html",
            400,
            title="Not confirmed",
            message=f"To break the lock, type the scope's path ({scope.path}) exactly.",
            back=url("scope", path=path),
        )
    client = await console.client()
    await client.break_lock(scope, int(token), actor=principal.name)
    raise web.HTTPSeeOther(url("scope", path=path, notice="lock-broken"))
