"""The RocksDB view on a real disk (no broker needed)."""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from evstate import keys
from evstate.applier import IDEMPOTENCY_WINDOW, prune_idempotency_keys
from evstate.errors import (
    ClosedError,
    EvstateError,
    ValidationError,
    ViewLockedError,
    ViewUnavailableError,
)
from evstate.view import View
from tests._util import subprocess_env

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def view_dir(tmp_path: Path) -> Path:
    return tmp_path / "view"


@pytest.fixture
def view(view_dir: Path) -> Iterator[View]:
    with View.open(view_dir) as v:
        yield v


def _child(code: str) -> subprocess.Popen[str]:
    """A Python process running ``code`` with this checkout importable."""
    env = subprocess_env(PYTHONPATH=str(REPO))
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def test_apply_get_and_delete(view: View) -> None:
    view.apply(0, 2, [(b"s:a", b"1"), (b"s:b", b"2")])
    assert view.get(b"s:a") == b"1"
    assert view.get(b"s:missing") is None

    view.apply(0, 3, [(b"s:a", None), (b"s:b", b"3")])
    assert view.get(b"s:a") is None
    assert view.get(b"s:b") == b"3"


def test_later_change_to_same_key_in_one_batch_wins(view: View) -> None:
    view.apply(0, 3, [(b"s:a", b"1"), (b"s:a", None), (b"s:a", b"3")])
    assert view.get(b"s:a") == b"3"


def test_empty_value_is_not_a_missing_key(view: View) -> None:
    view.apply(0, 1, [(b"s:a", b"")])
    assert view.get(b"s:a") == b""
    assert view.get_many([b"s:a"]) == {b"s:a": b""}


def test_get_many_leaves_missing_keys_out(view: View) -> None:
    view.apply(0, 2, [(b"s:a", b"1"), (b"s:b", b"2")])
    assert view.get_many([b"s:b", b"s:nope", b"s:a"]) == {b"s:a": b"1", b"s:b": b"2"}
    assert view.get_many((b"s:a",)) == {b"s:a": b"1"}
    assert view.get_many([]) == {}


def test_prefix_scan_excludes_nested_scopes(view: View) -> None:
    view.apply(
        0,
        6,
        [
            (b"scope:b", b"2"),
            (b"scope:a", b"1"),
            (b"scope/child:a", b"nested"),
            (b"scopeX:a", b"other"),
            (b"scop:a", b"shorter"),
            (b"scope;:a", b"after"),
        ],
    )
    assert list(view.scan_prefix(b"scope:")) == [(b"scope:a", b"1"), (b"scope:b", b"2")]
    assert view.keys_prefix(b"scope:") == [b"scope:a", b"scope:b"]
    assert view.count_prefix(b"scope:") == 2
    assert view.keys_prefix(b"scope/child:") == [b"scope/child:a"]
    assert view.count_prefix(b"absent:") == 0
    assert list(view.scan_prefix(b"absent:")) == []


def test_prefix_scan_of_everything_and_of_top_bytes(view: View) -> None:
    view.apply(0, 3, [(b"a:1", b"x"), (b"\xff\xff", b"y"), (b"\xff\xff\x00", b"z")])
    assert view.keys_prefix(b"") == [b"a:1", b"\xff\xff", b"\xff\xff\x00"]
    assert view.keys_prefix(b"\xff\xff") == [b"\xff\xff", b"\xff\xff\x00"]
    assert view.count_prefix(b"\xff") == 2


def test_offsets_never_show_up_in_scans(view: View) -> None:
    view.apply(7, 42, [])
    assert view.keys_prefix(b"") == []
    assert view.prefixes() == []


def test_count_and_keys_do_not_need_values(view: View) -> None:
    big = b"v" * 100_000
    view.apply(0, 100, [(f"s:{i:03}".encode(), big) for i in range(100)])
    keys = view.keys_prefix(b"s:")
    assert keys == [f"s:{i:03}".encode() for i in range(100)]
    assert all(isinstance(k, bytes) for k in keys)
    assert view.count_prefix(b"s:") == 100


def test_prefixes_are_distinct_and_sorted(view: View) -> None:
    view.apply(
        0,
        6,
        [
            (b"b:1", b""),
            (b"a:1", b""),
            (b"a:2", b""),
            (b"a/x:1", b""),
            (b"no-separator", b""),
            (b"c/d/e:1", b""),
        ],
    )
    assert view.prefixes() == [b"a", b"a/x", b"b", b"c/d/e"]
    assert view.prefixes(b"/") == [b"a", b"c"]
    with pytest.raises(ValidationError):
        view.prefixes(b"")


def test_offsets_start_empty_and_persist_across_reopen(view_dir: Path) -> None:
    with View.open(view_dir) as view:
        assert view.applied_offsets() == {}
        view.apply(0, 10, [(b"s:a", b"1")])
        view.apply_many([(1, 5, [(b"t:a", b"2")]), (2, 1, [])])
    with View.open(view_dir, create=False) as view:
        assert view.applied_offsets() == {0: 10, 1: 5, 2: 1}
        assert view.get(b"s:a") == b"1"
        assert view.get(b"t:a") == b"2"


def test_applied_offsets_is_a_copy(view: View) -> None:
    view.apply(0, 1, [])
    view.applied_offsets()[0] = 99
    assert view.applied_offsets() == {0: 1}


def test_empty_batch_still_advances_the_offset(view: View) -> None:
    view.apply(3, 17, [])
    assert view.applied_offsets() == {3: 17}
    view.apply(3, 18, iter(()))
    assert view.applied_offsets() == {3: 18}


def test_apply_many_last_offset_of_a_partition_wins(view: View) -> None:
    view.apply_many([(0, 2, [(b"s:a", b"1")]), (0, 4, [(b"s:a", b"2")]), (1, 9, [])])
    assert view.applied_offsets() == {0: 4, 1: 9}
    assert view.get(b"s:a") == b"2"


def test_failed_batch_writes_neither_data_nor_offset(view: View) -> None:
    view.apply(0, 1, [(b"s:a", b"old")])

    def changes() -> Iterator[tuple[bytes, bytes | None]]:
        yield (b"s:a", b"new")
        raise RuntimeError("consumer failed mid-batch")

    with pytest.raises(RuntimeError, match="mid-batch"):
        view.apply(0, 2, changes())
    assert view.get(b"s:a") == b"old"
    assert view.applied_offsets() == {0: 1}

    with pytest.raises(ValidationError):
        view.apply(0, 2, [(b"s:a", b"new"), ("s:b", b"str key")])  # type: ignore[list-item]
    with pytest.raises(ValidationError):
        view.apply_many([(0, 2, [(b"s:a", b"new")]), (1, 1, [(b"s:b", 5)])])  # type: ignore[list-item]
    with pytest.raises(ValidationError):
        view.apply(-1, 2, [(b"s:a", b"new")])
    with pytest.raises(ValidationError):
        view.apply(2**31, 2, [(b"s:a", b"new")])

    def bad_decode() -> Iterator[tuple[bytes, bytes | None]]:
        yield (b"s:a", b"new")
        raise ValueError("the caller's own bug")

    with pytest.raises(ValueError, match="own bug") as info:
        view.apply(0, 2, bad_decode())
    assert not isinstance(info.value, ValidationError)
    assert view.get(b"s:a") == b"old"
    assert view.applied_offsets() == {0: 1}


def test_crash_keeps_data_and_offset_in_step(view_dir: Path) -> None:
    """A process killed without close leaves each batch whole: data count == offset."""
    child = _child(
        f"""
        import os
        from evstate.view import View
        view = View.open({str(view_dir)!r})
        for i in range(200):
            view.apply(0, i + 1, [(b"s:%05d" % i, b"x" * 1000)])
        os._exit(0)  # no close, no flush: only the write-ahead log holds the batches
        """
    )
    _, err = child.communicate(timeout=60)
    assert child.returncode == 0, err
    with View.open(view_dir) as view:
        offsets = view.applied_offsets()
        assert offsets == {0: view.count_prefix(b"s:")}
        assert offsets[0] == 200


def test_second_open_in_another_process_is_locked(view_dir: Path) -> None:
    holder = _child(
        f"""
        import sys
        from evstate.view import View
        with View.open({str(view_dir)!r}) as view:
            print("ready", flush=True)
            sys.stdin.readline()
        """
    )
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline().strip() == "ready"
        with pytest.raises(ViewLockedError) as info:
            View.open(view_dir)
        assert info.value.path == str(view_dir)
        assert str(view_dir) in str(info.value)
        assert "another process" in str(info.value)
        assert isinstance(info.value, EvstateError)
    finally:
        holder.communicate("\n", timeout=30)
    assert holder.returncode == 0
    with View.open(view_dir) as view:  # released once the holder is gone
        assert view.applied_offsets() == {}


def test_second_open_in_this_process_is_locked(view: View) -> None:
    with pytest.raises(ViewLockedError) as info:
        View.open(view.path)
    assert info.value.path == view.path


def test_missing_dir_without_create_is_unavailable(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    with pytest.raises(ViewUnavailableError) as info:
        View.open(missing, create=False)
    assert info.value.path == str(missing)
    assert str(missing) in str(info.value)
    assert not missing.exists()


def test_empty_dir_without_create_is_unavailable(tmp_path: Path) -> None:
    with pytest.raises(ViewUnavailableError):
        View.open(tmp_path, create=False)


def test_path_that_is_a_file_is_unavailable(tmp_path: Path) -> None:
    target = tmp_path / "file"
    target.write_text("not a dir")
    with pytest.raises(ViewUnavailableError, match="not a directory"):
        View.open(target)


def test_dir_under_a_file_cannot_be_created(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    with pytest.raises(ViewUnavailableError, match="cannot create"):
        View.open(tmp_path / "file" / "view")


def _open_as_nobody(path: Path) -> str:
    """Fork, drop to user "nobody" in the child and try ``View.open(path)`` there.

    A forked child has this process's modules already loaded, so it needs no read access
    to the interpreter (which may live under /root). Returns what the child reported.
    """
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never return into pytest
        os.close(read_end)
        code = 0
        try:
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
            try:
                View.open(path)
            except ViewUnavailableError as exc:
                report = f"unavailable {exc.path} {exc}"
            else:
                report = "opened"
        except BaseException as exc:  # anything else is the test's failure, reported
            report = f"error {type(exc).__name__}: {exc}"
            code = 1
        os.write(write_end, report.encode())
        os._exit(code)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        report = pipe.read().decode()
    os.waitpid(pid, 0)
    return report


def test_read_only_dir_is_unavailable(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o500)
        try:
            with pytest.raises(ViewUnavailableError) as info:
                View.open(ro)
            assert info.value.path == str(ro)
            assert "not writable" in str(info.value)
        finally:
            ro.chmod(0o700)
        return
    # Root writes through any chmod, so try as an unprivileged user: a root-owned 0755 dir
    # is read-only to "nobody".
    ro = Path(tempfile.mkdtemp(prefix="evstate-ro-"))
    try:
        ro.chmod(0o755)
        report = _open_as_nobody(ro)
        assert report.startswith(f"unavailable {ro} "), report
        assert "not writable" in report
        assert os.listdir(ro) == []
    finally:
        shutil.rmtree(ro)


def test_dir_deleted_under_an_open_view(view_dir: Path) -> None:
    view = View.open(view_dir)
    view.apply(0, 1, [(b"s:a", b"1")])
    view.check_alive()
    shutil.rmtree(view_dir)
    with pytest.raises(ViewUnavailableError) as info:
        view.check_alive()
    assert info.value.path == str(view_dir)
    view.close()  # nothing left to flush to: close does not raise
    with pytest.raises(ClosedError):
        view.check_alive()


def test_dir_replaced_under_an_open_view(view_dir: Path, tmp_path: Path) -> None:
    with View.open(view_dir) as view:
        moved = tmp_path / "moved"
        view_dir.rename(moved)
        shutil.copytree(moved, view_dir)
        with pytest.raises(ViewUnavailableError):
            view.check_alive()


def test_use_after_close_raises_closed(view_dir: Path) -> None:
    view = View.open(view_dir)
    view.apply(0, 1, [(b"s:a", b"1")])
    view.close()
    view.close()  # idempotent
    calls: list[Callable[[], object]] = [
        lambda: view.get(b"s:a"),
        lambda: view.get_many([b"s:a"]),
        lambda: view.get_many([]),
        lambda: view.scan_prefix(b"s:"),
        lambda: view.keys_prefix(b"s:"),
        lambda: view.count_prefix(b"s:"),
        lambda: view.prefixes(),
        lambda: view.applied_offsets(),
        lambda: view.apply(0, 2, []),
        lambda: view.apply_many([]),
        lambda: view.clear(),
        lambda: view.check_alive(),
        lambda: view.__enter__(),
    ]
    for call in calls:
        with pytest.raises(ClosedError, match="closed"):
            call()
    assert "closed" in repr(view)


def test_context_manager_closes(view_dir: Path) -> None:
    with View.open(view_dir) as view:
        assert view.path == str(view_dir)
        assert "open" in repr(view)
    with pytest.raises(ClosedError):
        view.get(b"s:a")
    with View.open(view_dir):  # the lock was released
        pass


def test_relative_path_is_made_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with View.open("rel") as view:
        assert view.path == str(tmp_path / "rel")


def test_clear_drops_data_and_offsets_and_stays_open(view_dir: Path) -> None:
    with View.open(view_dir) as view:
        view.apply_many(
            [
                (0, 3, [(b"a:1", b"x"), (b"b/c:2", b"y")]),
                (1, 2, [(b"\xff\xfe", b"top"), (b"", b"empty key")]),
            ]
        )
        view.clear()
        assert view.applied_offsets() == {}
        assert view.keys_prefix(b"") == []
        assert view.get(b"a:1") is None
        assert view.get(b"\xff\xfe") is None
        view.apply(0, 1, [(b"a:1", b"again")])
        assert view.get(b"a:1") == b"again"
        assert view.applied_offsets() == {0: 1}
        view.clear()
    with View.open(view_dir) as view:  # the clear is durable too
        assert view.applied_offsets() == {}
        assert view.keys_prefix(b"") == []


def test_scan_reads_a_snapshot(view: View) -> None:
    view.apply(0, 2, [(b"s:a", b"1"), (b"s:b", b"2")])
    rows = view.scan_prefix(b"s:")
    assert next(rows) == (b"s:a", b"1")
    view.apply(0, 3, [(b"s:b", None), (b"s:c", b"3")])
    assert list(rows) == [(b"s:b", b"2")]


def test_non_bytes_key_on_read_is_a_validation_error(view: View) -> None:
    with pytest.raises(ValidationError):
        view.get("s:a")  # type: ignore[arg-type]


def test_close_cuts_off_a_live_scan_and_releases_the_dir(view_dir: Path) -> None:
    view = View.open(view_dir)
    view.apply(0, 3, [(b"s:a", b"1"), (b"s:b", b"2"), (b"s:c", b"3")])
    rows = view.scan_prefix(b"s:")
    assert next(rows) == (b"s:a", b"1")
    view.close()
    with pytest.raises(ClosedError, match="during a scan"):
        next(rows)
    with View.open(view_dir) as again:  # the abandoned scan does not hold the LOCK
        assert again.count_prefix(b"s:") == 3


def test_finished_scan_stays_finished(view: View) -> None:
    view.apply(0, 1, [(b"s:a", b"1")])
    rows = view.scan_prefix(b"s:")
    assert list(rows) == [(b"s:a", b"1")]
    assert list(rows) == []


def test_write_ahead_logs_do_not_pile_up(view: View, view_dir: Path) -> None:
    # The offsets column family never fills a memtable of its own; unless RocksDB is told
    # to flush it, it pins every write-ahead log written since the view opened.
    value = os.urandom(1200).hex().encode()  # 2,400 bytes that do not compress
    offset = 0
    for batch in range(300):  # ~290 MB through the write-ahead log
        changes = [(f"s:k{batch}-{i}".encode(), value) for i in range(400)]
        offset += len(changes)
        view.apply(batch % 12, offset, changes)
    wal_bytes = sum(p.stat().st_size for p in view_dir.glob("*.log"))
    assert wal_bytes < 200 * 1024 * 1024, f"{wal_bytes:,} bytes of write-ahead log kept"
    assert view.get(b"s:k0-0") == value
    assert view.get(b"s:k299-399") == value


def test_meta_keys_live_apart_and_are_dropped_with_their_partition(view: View) -> None:
    lease = keys.lease_key("app/dev")
    idem = keys.idempotency_key(keys.partition_for("app/dev", 12), "retry-1")
    view.apply(3, 10, [(b"app/dev:k", b"v"), (lease, b"{}"), (idem, struct.pack(">qq", 9, 0))])
    assert view.get(lease) is None  # not among the states
    assert view.keys_prefix(b"") == [b"app/dev:k"]
    assert view.prefixes() == [b"app/dev"]
    assert [k for k, _ in view.rules_items(keys.LEASE_PREFIX)] == [lease]
    view.drop_partitions(
        {keys.partition_for("app/dev", 12)},
        lambda k: keys.meta_partition(k, 12) if k[:1] == b"\x00" else -1,
    )
    assert view.rules_items(b"\x00") == []
    assert view.get(b"app/dev:k") == b"v"


def test_idempotency_keys_are_forgotten_after_their_window(view: View) -> None:
    now = 1_900_000_000.0
    fresh = keys.idempotency_key(0, "fresh")
    stale = keys.idempotency_key(0, "stale")
    day_ago = int((now - IDEMPOTENCY_WINDOW - 1) * 1000)
    view.apply(
        0,
        2,
        [
            (fresh, struct.pack(">qq", 0, int(now * 1000))),
            (stale, struct.pack(">qq", 1, day_ago)),
        ],
    )
    assert prune_idempotency_keys(view, now) == 1
    assert [k for k, _ in view.rules_items(keys.IDEMPOTENCY_PREFIX)] == [fresh]
    assert prune_idempotency_keys(view, now) == 0
