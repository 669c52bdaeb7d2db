"""Move state between Alchemy's state folders and evstate.

:func:`import_alchemy` reads an Alchemy ``.alchemy`` folder (:mod:`evstate.alchemy.fs`) and
writes each state as a SET event in its scope; :func:`export_alchemy` writes a scope and
its nested scopes back in Alchemy's layout.

States travel as the trees Alchemy serialized: secrets stay encrypted as they were, so an
import needs no password and an export gives back the same files. Decrypting and
re-encrypting would change every ciphertext (fresh IVs) and make "has this state changed?"
unanswerable. A password, when given, is only used to check that every secret opens
before anything is written.
"""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from evstate import keys, secrets
from evstate.alchemy import fs as alchemy_fs
from evstate.client import EvstateClient
from evstate.model import Scope
from evstate.serde import deserialize_state
from evstate.store import KafkaStateStore

__all__ = ["ImportResult", "export_alchemy", "import_alchemy"]

# Writes in flight at once during an import.
_CONCURRENCY = 64


@dataclass(slots=True)
class ImportResult:
    """What an import did, by record key (``scope/path:id``).

    Attributes:
        written: States written as SET events (new or changed).
        unchanged: States already stored with the same tree; not written again.
    """

    written: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)


async def _check_secrets(files: list[alchemy_fs.StateFile], password: str) -> None:
    for item in files:
        # Alchemy draws a salt per secret, so each costs a scrypt: keep it off the loop.
        await secrets.warm(password, item.tree)
        deserialize_state(Scope(*item.chain, password=password), item.tree)


async def import_alchemy(
    client: EvstateClient,
    directory: str | os.PathLike[str],
    *,
    password: str | None = None,
    reason: str = "import-alchemy",
) -> ImportResult:
    """Write every state of an Alchemy state folder to evstate, skipping unchanged ones.

    Every file is read and checked before the first write (names, fields, markers, the
    size of its event), so a bad file means nothing was written. Only regular files
    inside ``directory`` are read, each at most ``alchemy_fs.MAX_FILE_BYTES``. A state
    whose stored tree equals the file's (key order aside) is not written again, so
    importing twice writes nothing the second time.

    Args:
        client: The client to write through.
        directory: The ``.alchemy`` folder, or the project folder holding it.
        password: If given, every secret must open with it (checked before writing).
        reason: Recorded on every event.

    Returns:
        What was written and what was left as it was.

    Raises:
        ValidationError: the folder is missing, or a file is not a state, not a regular
            file inside the folder, or too large (names the file).
        SerdeError: a file holds a marker that does not decode (names the file).
        EventTooLargeError: a state is over the broker's limit (names the key).
        SecretError: ``password`` was given and a secret does not open with it.
        KafkaError: writing failed; states before the failure may have been written,
            and importing again completes the rest.
    """
    files = await asyncio.to_thread(alchemy_fs.read_states, directory)
    if password is not None:
        await _check_secrets(files, password)
    await client.catch_up()
    result = ImportResult()
    pending: list[tuple[KafkaStateStore, alchemy_fs.StateFile, str]] = []
    for item in files:
        store = client.store(Scope(*item.chain))
        record_key = keys.record_key(store.scope, item.id)
        if await store.get_tree(item.id, consistency="eventual") == item.tree:
            result.unchanged.append(record_key)
        else:
            pending.append((store, item, record_key))
    for store, item, _record_key in pending:
        # Everything a write could refuse, refused before the first one is sent.
        await store.check_set_tree(item.id, item.tree, reason=reason)

    gate = asyncio.Semaphore(_CONCURRENCY)

    async def write(store: KafkaStateStore, item: alchemy_fs.StateFile, record_key: str) -> None:
        async with gate:
            await store.set_tree(item.id, item.tree, reason=reason)

    await asyncio.gather(*(write(*job) for job in pending))
    result.written.extend(record_key for _store, _item, record_key in pending)
    return result


async def export_alchemy(
    client: EvstateClient, scope: Scope | str, directory: str | os.PathLike[str]
) -> list[Path]:
    """Write ``scope`` and every scope nested in it in Alchemy's state folder layout.

    Files are written as Alchemy writes them, from the trees as stored; existing files of
    other states are left alone (nothing is deleted).

    Args:
        client: The client to read through (its view is caught up with the topic first).
        scope: The scope, or its path (``app/stage``, or just ``app`` for every stage).
        directory: The state root to write into (Alchemy's ``.alchemy``), or a project
            folder that has one.

    Returns:
        The files written, sorted.

    Raises:
        InvalidScopeError: ``scope`` is not a valid scope path, or a stored scope name
            could not be a folder (stored before such names were refused).
        ValidationError: a file would land outside ``directory``; nothing is written.
    """
    base = scope if isinstance(scope, Scope) else Scope.parse(scope)
    await client.catch_up()
    trees: list[tuple[tuple[str, ...], str, Any]] = []
    for path in client.scopes():
        if path != base.path and not path.startswith(base.path + "/"):
            continue
        nested = Scope.parse(path)
        stored = await client.store(nested).all_trees(consistency="eventual")
        trees.extend((nested.chain, key, tree) for key, tree in stored.items())

    root = alchemy_fs.state_root(directory)

    def write_all() -> list[Path]:
        # Every target is checked (inside root, valid names) before the first file.
        for chain, key, _tree in trees:
            alchemy_fs.target_path(root, chain, key)
        return sorted(alchemy_fs.write_state(root, *job) for job in trees)

    return await asyncio.to_thread(write_all)
