"""Settings: defaults, the environment, overrides and validation."""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import pytest

from evstate.config import ENV_VARS, Settings
from evstate.errors import ConfigError


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ENV_VARS.values():
        monkeypatch.delenv(var, raising=False)


def test_defaults() -> None:
    s = Settings()
    assert s.bootstrap_servers == "127.0.0.1:9092"
    assert s.view_dir == os.path.expanduser("~/.local/state/evstate/view")
    assert not s.view_dir.startswith("~")
    assert s.topic_prefix == "evstate"
    assert s.password is None
    assert "@" in s.actor
    assert s.partitions == 12
    assert s.replication_factor is None
    assert s.client_id == "evstate"
    assert (s.request_timeout, s.connect_timeout, s.read_timeout) == (30.0, 10.0, 10.0)
    assert s.security_protocol == "PLAINTEXT"
    assert s.history is True


def test_topics() -> None:
    s = Settings(topic_prefix="team-a.prod")
    assert s.state_topic == "team-a.prod.state"
    assert s.history_topic == "team-a.prod.history"


def test_frozen_and_keyword_only() -> None:
    s = Settings()
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.partitions = 3  # type: ignore[misc]
    with pytest.raises(TypeError):
        Settings("127.0.0.1:9092")  # type: ignore[call-arg]


def test_secrets_not_in_repr() -> None:
    s = Settings(password="hunter2", sasl_plain_password="sasl-pw", sasl_plain_username="bob")
    assert "hunter2" not in repr(s)
    assert "sasl-pw" not in repr(s)
    assert "bob" in repr(s)


def test_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EVSTATE_BOOTSTRAP_SERVERS", "k1:9092,k2:9092")
    monkeypatch.setenv("EVSTATE_VIEW_DIR", "~/views/x")
    monkeypatch.setenv("EVSTATE_TOPIC_PREFIX", "ci")
    monkeypatch.setenv("EVSTATE_PASSWORD", "pw")
    monkeypatch.setenv("EVSTATE_ACTOR", "robot")
    s = Settings.from_env()
    assert s.bootstrap_servers == "k1:9092,k2:9092"
    assert s.view_dir == os.path.expanduser("~/views/x")
    assert s.topic_prefix == "ci"
    assert s.state_topic == "ci.state"
    assert s.password == "pw"
    assert s.actor == "robot"


def test_from_env_without_env_gives_defaults() -> None:
    assert Settings.from_env() == Settings()


def test_overrides_beat_env_and_none_is_ignored(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EVSTATE_BOOTSTRAP_SERVERS", "env:9092")
    monkeypatch.setenv("EVSTATE_ACTOR", "env-actor")
    s = Settings.from_env(bootstrap_servers="arg:9092", actor=None, partitions=3)
    assert s.bootstrap_servers == "arg:9092"
    assert s.actor == "env-actor"
    assert s.partitions == 3


def test_empty_env_var_counts_as_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EVSTATE_TOPIC_PREFIX", "")
    assert Settings.from_env().topic_prefix == "evstate"


def test_from_env_explicit_mapping() -> None:
    s = Settings.from_env({"EVSTATE_TOPIC_PREFIX": "given", "UNRELATED": "x"})
    assert s.topic_prefix == "given"


def test_unknown_override() -> None:
    with pytest.raises(ConfigError, match="bootstrap"):
        Settings.from_env(bootstrap="x")


def test_invalid_env_value_is_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EVSTATE_TOPIC_PREFIX", "bad prefix")
    with pytest.raises(ConfigError, match="topic_prefix"):
        Settings.from_env()


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("bootstrap_servers", ""),
        ("bootstrap_servers", "   "),
        ("view_dir", ""),
        ("actor", ""),
        ("client_id", ""),
        ("partitions", 0),
        ("partitions", -1),
        ("partitions", 1.5),
        ("partitions", True),
        ("replication_factor", 0),
        ("request_timeout", -1.0),
        ("request_timeout", 0),
        ("connect_timeout", -0.1),
        ("connect_timeout", float("inf")),
        ("read_timeout", -5),
        ("read_timeout", float("nan")),
        ("read_timeout", "10"),
        ("topic_prefix", ""),
        ("topic_prefix", "has space"),
        ("topic_prefix", "slash/no"),
        ("topic_prefix", "colon:no"),
        ("topic_prefix", "ü"),
        ("topic_prefix", ".."),
        ("topic_prefix", "x" * 245),
        ("security_protocol", "TLS"),
        ("password", 5),
        ("history", "yes"),
    ],
)
def test_validation_names_the_field(field: str, value: Any) -> None:
    with pytest.raises(ConfigError, match=field):
        Settings(**{field: value})


def test_config_error_is_value_error() -> None:
    with pytest.raises(ValueError, match="partitions"):
        Settings(partitions=0)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("read_timeout", 0),
        ("partitions", 1),
        ("replication_factor", 3),
        ("topic_prefix", "a.b_c-D9"),
        ("topic_prefix", "x" * 241),
        ("security_protocol", "SASL_SSL"),
    ],
)
def test_edge_values_accepted(field: str, value: Any) -> None:
    assert getattr(Settings(**{field: value}), field) == value
