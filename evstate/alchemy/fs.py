"""Alchemy's ``FileSystemStateStore`` layout on disk: read and write it, nothing more.

Alchemy (0.94.0) keeps one JSON file per state::

    <root>/<app>/<stage>/<nested scope>/.../<id>.json

where ``<root>`` is the project's ``.alchemy`` folder, the folders are the scope chain, and a
``/`` in an id is written ``:`` in the file name (``logs/app.log`` →
``logs:app.log.json``). Each file is ``JSON.stringify(serializedState, null, 2)``: the state
tree with Alchemy's serde markers, secrets already encrypted. Alchemy also keeps ``logs/``,
``pids/`` and ``miniflare/`` (Cloudflare local dev) directly under the root; those are
skipped, and so are files less than two folders deep (a state has an app and a stage).

This module moves trees between files and Python dicts as they are, so a folder read and
written back is equal to the original, byte for byte up to key order. Sending them to
Kafka is :mod:`evstate.alchemy.migrate`'s job.
"""

from __future__ import annotations

import json
import os
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from evstate import keys
from evstate.errors import InvalidStateError, SerdeError, ValidationError
from evstate.model import Scope, State
from evstate.serde import check_tree

__all__ = [
    "MAX_FILE_BYTES",
    "StateFile",
    "dumps",
    "file_name",
    "id_of",
    "read_states",
    "state_root",
    "target_path",
    "write_state",
]

_SUFFIX = ".json"
# app and stage: a state file is never shallower than this below the root.
_MIN_DEPTH = 2
# Folders Alchemy keeps directly under the root that hold no state.
_NOT_STATE = frozenset({"logs", "pids", "miniflare"})
MAX_FILE_BYTES = 16 * 1024 * 1024
"""Largest state file read; a state this big could not be written to Kafka anyway."""


@dataclass(frozen=True, slots=True)
class StateFile:
    """One state read from an Alchemy state folder.

    Attributes:
        chain: The scope chain (the folders below the root).
        id: The state's id (the file name, ``:`` read as ``/``).
        tree: The serialized state, exactly as in the file.
        path: The file.
    """

    chain: tuple[str, ...]
    id: str
    tree: dict[str, Any]
    path: Path


def state_root(directory: str | os.PathLike[str]) -> Path:
    """The state root for ``directory``: its ``.alchemy`` folder if it has one, else itself.

    Args:
        directory: An Alchemy project folder or its ``.alchemy`` folder.

    Returns:
        The folder holding ``<app>/<stage>/...``.
    """
    path = Path(directory)
    dot = path / ".alchemy"
    return dot if dot.is_dir() else path


def file_name(state_id: str) -> str:
    """The file name Alchemy gives the state ``state_id`` (``a/b`` → ``a:b.json``).

    Raises:
        InvalidKeyError: the id is empty or contains ``:``.
    """
    keys.validate_key(state_id)
    return state_id.replace("/", ":") + _SUFFIX


def id_of(name: str) -> str:
    """The state id a file name stands for; the reverse of :func:`file_name`."""
    return name.removesuffix(_SUFFIX).replace(":", "/")


def dumps(tree: Any) -> str:
    """A tree as Alchemy writes it: ``JSON.stringify(tree, null, 2)``, no final newline."""
    return json.dumps(tree, indent=2, ensure_ascii=False, allow_nan=False)


def _inside(path: Path, root: Path) -> Path:
    """``path`` with every symlink resolved, refused unless it stays inside ``root``."""
    resolved = path.resolve()
    if not resolved.is_relative_to(root.resolve()):
        raise ValidationError(f"{path} leads to {resolved}, outside {root}; refused")
    return resolved


def _read_bytes(path: Path, root: Path) -> bytes:
    """A regular file inside ``root``, at most :data:`MAX_FILE_BYTES`; nothing else is read.

    A FIFO, a device, a socket or a symlink leading out of ``root`` is refused before it
    is opened for reading (O_NONBLOCK: opening a FIFO would otherwise wait for a writer).
    """
    resolved = _inside(path, root)
    try:
        fd = os.open(resolved, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0))
    except OSError as exc:
        raise ValidationError(f"{path} cannot be read: {exc.strerror or exc}") from None
    with os.fdopen(fd, "rb") as handle:
        info = os.fstat(handle.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise ValidationError(f"{path} is not a regular file; refused")
        data = handle.read(MAX_FILE_BYTES + 1)
    if len(data) > MAX_FILE_BYTES:
        raise InvalidStateError(f"{path} is larger than {MAX_FILE_BYTES} bytes; refused")
    return data


def _read(path: Path, chain: tuple[str, ...], root: Path) -> StateFile:
    data = _read_bytes(path, root)
    try:
        tree = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidStateError(f"{path} is not a JSON state file: {exc}") from None
    except RecursionError:
        raise InvalidStateError(f"{path} is nested too deeply to be a state") from None
    state_id = id_of(path.name)
    try:
        Scope(*chain)
        keys.validate_key(state_id)
        State.from_json(tree)
        # Markers that would not decode are refused here, not met on every later read.
        check_tree(tree)
    except (ValidationError, SerdeError) as exc:
        raise type(exc)(f"{path}: {exc}") from None
    if tree["id"] != state_id:
        raise InvalidStateError(
            f"{path}: the file name says id {state_id!r} but the state says {tree['id']!r}"
        )
    return StateFile(chain, state_id, tree, path)


def read_states(directory: str | os.PathLike[str]) -> list[StateFile]:
    """Every state in an Alchemy state folder, sorted by scope and id.

    Args:
        directory: The state root, or a project folder holding ``.alchemy``.

    Returns:
        The states, with their trees exactly as stored.

    Only regular files inside the root are read, each at most :data:`MAX_FILE_BYTES`; a
    FIFO, a device or a symlink leading outside the root is refused.

    Raises:
        ValidationError: ``directory`` is not a folder, or a file is not a regular file
            inside it.
        InvalidStateError: a file is not JSON, or not a state, or its id differs from its
            file name; the message names the file. Nothing is returned then, so a caller
            writes all or nothing.
        SerdeError: a file holds a marker (``@date``, ``@secret``, ...) that does not
            decode.
        InvalidScopeError, InvalidKeyError: a folder or file name cannot be a scope name
            or id.
    """
    root = state_root(directory)
    if not root.is_dir():
        raise ValidationError(f"{root} is not a folder")
    found: list[StateFile] = []
    for folder, dirs, files in os.walk(root):
        chain = Path(folder).relative_to(root).parts
        if not chain:
            dirs[:] = [d for d in dirs if d not in _NOT_STATE]
        dirs.sort()
        if len(chain) < _MIN_DEPTH:
            continue
        for name in sorted(files):
            if name.endswith(_SUFFIX) and len(name) > len(_SUFFIX):
                found.append(_read(Path(folder) / name, tuple(chain), root))
    found.sort(key=lambda f: (f.chain, f.id))
    return found


def target_path(directory: str | os.PathLike[str], chain: tuple[str, ...], state_id: str) -> Path:
    """The file :func:`write_state` would write, checked to stay inside ``directory``.

    Raises:
        InvalidKeyError, InvalidScopeError: as :func:`write_state`.
        ValidationError: the file would land outside ``directory`` (a symlinked folder).
    """
    Scope(*chain)
    root = Path(directory)
    target = Path(root, *chain) / file_name(state_id)
    _inside(target, root)
    return target


def write_state(
    directory: str | os.PathLike[str], chain: tuple[str, ...], state_id: str, tree: Any
) -> Path:
    """Write one state where Alchemy's ``FileSystemStateStore`` would.

    The file is replaced atomically (written beside it, then renamed), so a reader never
    sees half a state. Whatever the names, the file stays inside ``directory``: its folder
    is resolved (symlinks included) and refused if it leads anywhere else.

    Args:
        directory: The state root (``.alchemy``).
        chain: The scope chain.
        state_id: The state's id.
        tree: The serialized state.

    Returns:
        The file written.

    Raises:
        InvalidKeyError: the id is empty or contains ``:``.
        InvalidScopeError: a scope name is empty or contains ``:``.
        ValidationError: the file would land outside ``directory``.
    """
    root = Path(directory)
    target = target_path(root, chain, state_id)  # before anything is created
    folder = target.parent
    folder.mkdir(parents=True, exist_ok=True)
    _inside(target, root)  # a folder swapped for a symlink meanwhile
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".evstate-", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(dumps(tree))
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target
