"""The broker's prerequisites: Java 17+ and Maven, with errors that name the fix."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from evstate.broker import kafka_jars
from evstate.broker.runtime import KAFKA_VERSION, find_java, parse_java_major
from evstate.errors import JarResolutionError, JavaNotFoundError, MavenNotFoundError


def _fake_java(tmp_path: Path, version_line: str) -> str:
    """A stand-in `java` that only answers `-version`, as an old JDK would."""
    exe = tmp_path / "java"
    exe.write_text(f"#!/bin/sh\necho '{version_line}' >&2\n")
    exe.chmod(exe.stat().st_mode | stat.S_IEXEC)
    return str(exe)


@pytest.mark.parametrize(
    ("text", "major"),
    [
        ('openjdk version "17.0.15" 2025-04-15', 17),
        ('openjdk version "25" 2025-09-16', 25),
        ('java version "1.8.0_392"', 8),
        ("no version here", None),
    ],
)
def test_parse_java_major(text: str, major: int | None) -> None:
    assert parse_java_major(text) == major


def test_real_java_is_found() -> None:
    assert find_java().major >= 17


def test_no_java_names_the_fix(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("JAVA_HOME", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(JavaNotFoundError, match="JAVA_HOME"):
        find_java()


def test_old_java_is_refused(tmp_path: Path) -> None:
    java = _fake_java(tmp_path, 'openjdk version "11.0.2" 2019-01-15')
    with pytest.raises(JavaNotFoundError, match=r"Java 11, Apache Kafka 4 needs Java 17\+"):
        find_java(java)


def test_no_maven_and_no_cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(MavenNotFoundError, match="install Maven"):
        kafka_jars(KAFKA_VERSION, cache_dir=tmp_path / "cache")


def test_cached_jars_need_no_maven(monkeypatch: pytest.MonkeyPatch) -> None:
    libs = kafka_jars()  # resolved by the session's broker already, or now
    monkeypatch.setenv("PATH", os.devnull)
    assert kafka_jars() == libs
    assert any(p.name.startswith("kafka_2.13-") for p in libs.iterdir())


def test_unresolvable_version_shows_maven_output(tmp_path: Path) -> None:
    with pytest.raises(JarResolutionError, match=r"0\.0\.0-no-such-version") as info:
        kafka_jars("0.0.0-no-such-version", cache_dir=tmp_path / "cache")
    assert "Maven said" in str(info.value)
    assert not (tmp_path / "cache" / "kafka" / "0.0.0-no-such-version" / ".complete").exists()
