"""Settings: one frozen, keyword-only dataclass, and the one place that reads ``EVSTATE_*``.

Nothing else in the package reads the environment; pass a :class:`Settings` instead.
"""

from __future__ import annotations

import getpass
import math
import os
import re
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from evstate.errors import ConfigError

__all__ = ["ENV_VARS", "SECURITY_PROTOCOLS", "Settings", "default_broker_dir", "default_cache_dir"]

# Settings field → environment variable; only these are read from the environment.
ENV_VARS: Mapping[str, str] = {
    "bootstrap_servers": "EVSTATE_BOOTSTRAP_SERVERS",
    "transactional_id": "EVSTATE_TRANSACTIONAL_ID",
    "view_dir": "EVSTATE_VIEW_DIR",
    "topic_prefix": "EVSTATE_TOPIC_PREFIX",
    "password": "EVSTATE_PASSWORD",
    "actor": "EVSTATE_ACTOR",
    "token": "EVSTATE_TOKEN",
    "metrics_token": "EVSTATE_METRICS_TOKEN",
    "auth_file": "EVSTATE_AUTH_FILE",
    "secret_keys": "EVSTATE_SECRET_KEYS",
    "secret_key_file": "EVSTATE_SECRET_KEY_FILE",
    "lock_scope": "EVSTATE_LOCK_SCOPE",
    "lock_token": "EVSTATE_LOCK_TOKEN",
}

SECURITY_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")

# Kafka topic names: [a-zA-Z0-9._-], at most 249 chars.
_TOPIC_CHARS = re.compile(r"[a-zA-Z0-9._-]+")
_TOPIC_MAX = 249
_LONGEST_SUFFIX = ".history"


def default_broker_dir() -> str:
    """Where ``evstate broker`` keeps its data: ``$EVSTATE_BROKER_DIR`` or the XDG state dir."""
    state_home = os.environ.get("XDG_STATE_HOME") or os.path.expanduser("~/.local/state")
    return os.environ.get("EVSTATE_BROKER_DIR") or os.path.join(state_home, "evstate", "broker")


def default_cache_dir() -> str:
    """Where resolved broker jars are cached: ``$EVSTATE_CACHE_DIR`` or ``~/.cache/evstate``."""
    cache_home = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
    return os.environ.get("EVSTATE_CACHE_DIR") or os.path.join(cache_home, "evstate")


def _default_view_dir() -> str:
    return os.path.expanduser("~/.local/state/evstate/view")


def _default_actor() -> str:
    # getuser() raises when no user name can be found (e.g. a bare container uid).
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


@dataclass(frozen=True, kw_only=True)
class Settings:
    """Everything a client needs to reach Kafka and keep its view.

    Attributes:
        bootstrap_servers: Comma-separated ``host:port`` list (env
            ``EVSTATE_BOOTSTRAP_SERVERS``).
        view_dir: Directory of the local RocksDB view (env ``EVSTATE_VIEW_DIR``).
        topic_prefix: Topics are ``{prefix}.state`` and ``{prefix}.history`` (env
            ``EVSTATE_TOPIC_PREFIX``).
        password: Password for secrets (env ``EVSTATE_PASSWORD``); never in repr.
        actor: Recorded on every event (env ``EVSTATE_ACTOR``; default ``user@host``).
        partitions: Partitions of the topics evstate creates.
        replication_factor: Replicas per partition; ``None`` means ``min(3, brokers)``.
        client_id: Kafka client id.
        request_timeout: Seconds a Kafka request may take.
        connect_timeout: Seconds to wait for the bootstrap servers.
        read_timeout: Seconds a read waits for the view to be consistent.
        security_protocol: One of :data:`SECURITY_PROTOCOLS`.
        sasl_mechanism: SASL mechanism (``PLAIN``, ``SCRAM-SHA-256``, ...), if any.
        sasl_plain_username: SASL user name, if any.
        sasl_plain_password: SASL password, if any; never in repr.
        ssl_cafile: CA bundle for TLS, if any.
        ssl_certfile: Client certificate for TLS, if any.
        ssl_keyfile: Client key for TLS, if any.
        history: Whether writes also go to the history topic (in one transaction with the
            state topic).
        history_retention_ms: ``retention.ms`` of the history topic; -1 keeps it forever.
        state_topic_configs: Extra configs for a state topic evstate creates (e.g. segment
            sizes); cleanup.policy is always ``compact``.
        history_topic_configs: Extra configs for a history topic evstate creates.
        transactional_id: The prefix of the writers' transactional ids; ``None`` means
            ``evstate-{topic_prefix}``. Every process writing to the same topics must use
            the same one: the shared ids are how Kafka fences all but one writer of a
            partition (see docs/design.md, the write path).
        transaction_timeout: Seconds before the broker aborts a transaction whose writer
            vanished (readers of its partitions wait at most this long). A writer keeps
            its next transaction open between writes and aborts it after a third of
            this when idle.
        token: The bearer token ``evstate serve`` requires (env ``EVSTATE_TOKEN``); never
            in repr.
        metrics_token: The bearer token ``GET /metrics`` of ``evstate serve`` requires
            (env ``EVSTATE_METRICS_TOKEN``); ``None``: the metrics need no token. Never
            in repr.
        auth_file: The principals file of ``evstate serve`` (TOML, env
            ``EVSTATE_AUTH_FILE``); ``None``: the single ``token`` opens every scope.
        secret_keys: The keys ``evstate serve`` seals Alchemy v2 secrets with (env
            ``EVSTATE_SECRET_KEYS``): ``<key id>:<base64 of 32 bytes>`` entries separated
            by commas, the sealing key first (:class:`evstate.secrets.SecretKeys`). Never
            in repr.
        secret_key_file: A file of such entries, one a line (env
            ``EVSTATE_SECRET_KEY_FILE``); used when ``secret_keys`` is not set.
        lock_scope, lock_token: a lease held for this process by its parent (``evstate
            run --lock`` sets ``EVSTATE_LOCK_SCOPE`` and ``EVSTATE_LOCK_TOKEN``): writes
            under that scope carry the token.
    """

    bootstrap_servers: str = "127.0.0.1:9092"
    view_dir: str = field(default_factory=_default_view_dir)
    topic_prefix: str = "evstate"
    password: str | None = field(default=None, repr=False)
    actor: str = field(default_factory=_default_actor)
    partitions: int = 12
    replication_factor: int | None = None
    client_id: str = "evstate"
    request_timeout: float = 30.0
    connect_timeout: float = 10.0
    read_timeout: float = 10.0
    security_protocol: str = "PLAINTEXT"
    sasl_mechanism: str | None = None
    sasl_plain_username: str | None = None
    sasl_plain_password: str | None = field(default=None, repr=False)
    ssl_cafile: str | None = None
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None
    history: bool = True
    history_retention_ms: int = -1
    state_topic_configs: Mapping[str, str] = field(default_factory=dict)
    history_topic_configs: Mapping[str, str] = field(default_factory=dict)
    transactional_id: str | None = None
    transaction_timeout: float = 15.0
    token: str | None = field(default=None, repr=False)
    metrics_token: str | None = field(default=None, repr=False)
    auth_file: str | None = None
    secret_keys: str | None = field(default=None, repr=False)
    secret_key_file: str | None = None
    lock_scope: str | None = None
    lock_token: int | None = None

    def __post_init__(self) -> None:
        for name in ("bootstrap_servers", "view_dir", "topic_prefix", "actor", "client_id"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value.strip():
                raise ConfigError(f"setting {name!r} must be a non-empty str, got {value!r}")
        for name in (
            "token",
            "metrics_token",
            "auth_file",
            "secret_keys",
            "secret_key_file",
            "password",
            "sasl_mechanism",
            "sasl_plain_username",
            "sasl_plain_password",
            "ssl_cafile",
            "ssl_certfile",
            "ssl_keyfile",
        ):
            value = getattr(self, name)
            if value is not None and not isinstance(value, str):
                raise ConfigError(f"setting {name!r} must be a str or None")
        self._check_bootstrap_servers()
        self._check_topic_prefix()
        self._check_int("partitions", self.partitions, nullable=False)
        self._check_int("replication_factor", self.replication_factor, nullable=True)
        for name in ("request_timeout", "connect_timeout", "read_timeout"):
            value = getattr(self, name)
            if (
                isinstance(value, bool)
                or not isinstance(value, int | float)
                or not math.isfinite(value)
                or value < 0
                # A zero request/connect timeout could never succeed; a zero read
                # timeout means "do not wait".
                or (value == 0 and name != "read_timeout")
            ):
                raise ConfigError(
                    f"setting {name!r} must be a finite number of seconds > 0, got {value!r}"
                )
        if self.security_protocol not in SECURITY_PROTOCOLS:
            raise ConfigError(
                f"setting 'security_protocol' must be one of {', '.join(SECURITY_PROTOCOLS)}, "
                f"got {self.security_protocol!r}"
            )
        if not isinstance(self.history, bool):
            raise ConfigError(f"setting 'history' must be a bool, got {self.history!r}")
        if isinstance(self.history_retention_ms, bool) or not isinstance(
            self.history_retention_ms, int
        ):
            raise ConfigError("setting 'history_retention_ms' must be an int (-1: forever)")
        for name in ("state_topic_configs", "history_topic_configs"):
            value = getattr(self, name)
            if not isinstance(value, Mapping) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in value.items()
            ):
                raise ConfigError(f"setting {name!r} must map str to str")
        if self.transactional_id is not None and not (
            isinstance(self.transactional_id, str) and self.transactional_id.strip()
        ):
            raise ConfigError("setting 'transactional_id' must be a non-empty str or None")
        if (self.lock_scope is None) != (self.lock_token is None) or (
            self.lock_token is not None
            and (isinstance(self.lock_token, bool) or not isinstance(self.lock_token, int))
        ):
            raise ConfigError(
                "settings 'lock_scope' and 'lock_token' go together (EVSTATE_LOCK_SCOPE and "
                "EVSTATE_LOCK_TOKEN, set by evstate run --lock); the token is an int"
            )
        if (
            isinstance(self.transaction_timeout, bool)
            or not isinstance(self.transaction_timeout, int | float)
            or not 1 <= self.transaction_timeout <= 900
        ):
            raise ConfigError("setting 'transaction_timeout' must be between 1 and 900 seconds")

    def _check_bootstrap_servers(self) -> None:
        # aiokafka would raise a bare ValueError (or OverflowError) deep inside.
        for server in self.bootstrap_servers.split(","):
            host, sep, port = server.strip().rpartition(":")
            if not sep:  # a host alone: Kafka's default port
                host, port = port, "9092"
            if not host or not port.isdecimal() or not 1 <= int(port) <= 65535:
                raise ConfigError(
                    f"setting 'bootstrap_servers' wants host:port[,host:port...] with ports "
                    f"1-65535, got {server.strip()!r}"
                )

    def _check_topic_prefix(self) -> None:
        prefix = self.topic_prefix
        if not _TOPIC_CHARS.fullmatch(prefix):
            raise ConfigError(
                f"setting 'topic_prefix' {prefix!r} may only use letters, digits, '.', '_' "
                "and '-' (Kafka topic names forbid anything else)"
            )
        if prefix in (".", ".."):
            raise ConfigError("setting 'topic_prefix' may not be '.' or '..'")
        if len(prefix) + len(_LONGEST_SUFFIX) > _TOPIC_MAX:
            raise ConfigError(
                f"setting 'topic_prefix' is too long: topic names may have at most "
                f"{_TOPIC_MAX} chars"
            )

    @staticmethod
    def _check_int(name: str, value: object, *, nullable: bool) -> None:
        if value is None and nullable:
            return
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"setting {name!r} must be an int >= 1, got {value!r}")

    @property
    def state_topic(self) -> str:
        """The compacted topic holding the latest event per key."""
        return f"{self.topic_prefix}.state"

    @property
    def history_topic(self) -> str:
        """The append-only topic holding every event."""
        return f"{self.topic_prefix}.history"

    @property
    def access_topic(self) -> str:
        """The append-only topic of ``evstate serve``'s access log."""
        return f"{self.topic_prefix}.access"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, /, **overrides: Any) -> Settings:
        """Build settings from the environment, then apply overrides.

        Precedence: an override that is not ``None``, then the ``EVSTATE_*`` variable
        (see :data:`ENV_VARS`; an empty variable counts as unset), then the default.

        Args:
            environ: The environment to read; ``os.environ`` when ``None``.
            **overrides: Settings fields; ``None`` values are ignored.

        Returns:
            The validated settings.

        Raises:
            ConfigError: An override names no field, or a value is invalid.
        """
        env = os.environ if environ is None else environ
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise ConfigError(f"unknown setting(s): {', '.join(unknown)}")
        values: dict[str, Any] = {}
        for name, var in ENV_VARS.items():
            if env.get(var):
                values[name] = env[var]
        for name in ("view_dir", "auth_file", "secret_key_file"):
            if name in values:
                values[name] = os.path.expanduser(values[name])
        if "lock_token" in values:
            text = values["lock_token"]
            if not text.isdecimal():
                raise ConfigError(f"EVSTATE_LOCK_TOKEN must be a decimal int, not {text!r}")
            values["lock_token"] = int(text)
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)
