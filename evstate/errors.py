"""Every error evstate raises, under one root.

Callers catch :class:`EvstateError` for "anything evstate refused or could not do", or a
branch of the tree for something specific. Library errors (aiokafka, rocksdict, fastavro,
cryptography) never reach a caller: the adapter that met them re-raises one of these
``from`` the original.

::

    EvstateError
    ├── ConfigError (ValueError)               settings missing or inconsistent
    ├── ValidationError (ValueError)           bad input; nothing was written
    │   ├── InvalidKeyError                    empty key, ':', control char, '..' segment,
    │   │                                      key != state.id
    │   ├── InvalidScopeError                  not a Scope, empty name, ':', control char, '..'
    │   ├── InvalidStateError                  not a State, unknown status, wrong field types
    │   ├── InvalidRecordError                 an Alchemy v2 record evstate cannot keep
    │   └── EventTooLargeError                 encoded event over the broker's limit
    ├── SerdeError                             a value could not be (de)serialized
    │   ├── UnserializableError (TypeError)    socket, lock, cycle, ... (names the path)
    │   ├── SecretError                        password missing or wrong
    │   │   └── SealedSecretError              a v2 secret the server's keys do not open
    │   ├── MalformedEventError                bytes that are not a readable event
    │   └── UnreadableStateError               a stored state that does not decode (names key)
    ├── BrokerError                            running the local Apache Kafka (evstate broker)
    │   ├── JavaNotFoundError                  no Java, or Java older than 17
    │   ├── MavenNotFoundError                 no mvn to resolve the broker's jars
    │   ├── JarResolutionError                 mvn could not resolve the jars
    │   ├── PortInUseError                     a port the broker needs is taken
    │   ├── BrokerAlreadyRunningError          a broker already runs in that data dir
    │   ├── BrokerNotRunningError              nothing to stop or ask
    │   └── BrokerStartTimeout (TimeoutError)  did not answer in time (carries the log tail)
    ├── KafkaError                             talking to Kafka failed
    │   ├── BrokerUnavailableError (ConnectionError)   bootstrap servers unreachable
    │   ├── AuthenticationError (PermissionError)       SASL credentials refused
    │   ├── NotAuthorizedError (PermissionError)        Kafka's ACLs refuse the principal
    │   ├── TopicMismatchError                 topic exists with other policy/partitions
    │   │   └── LayoutError                    topic written with the old partition rule
    │   │                                      (run `evstate migrate`), or an unknown one
    │   └── WriteFailedError                   the broker did not acknowledge a write
    │       └── WriterFencedError              another process took this partition's writer ids
    ├── ViewError                              the local RocksDB view
    │   ├── ViewLockedError                    another process holds the view dir
    │   └── ViewUnavailableError               dir missing, read-only or deleted under us
    ├── ConflictError                          compare-and-set: the key is at another version
    ├── ForbiddenError (PermissionError)       a principal lacks a grant on a scope (serve)
    ├── LockError                              a lock refused a write, lock, renew or release
    │   ├── LockHeldError                      someone else's lease covers the scope
    │   ├── FencedError                        the caller's lease was broken or taken over
    │   └── NoSuchLeaseError                   no lease with that token to break
    ├── ConsistencyTimeout (TimeoutError)      the view did not reach a position in time
    └── ClosedError (RuntimeError)             a client or store used after close

``retriable`` on a class says whether the same call may succeed if simply tried again.
"""

from __future__ import annotations

from datetime import datetime


class EvstateError(Exception):
    """Root of every error evstate raises."""

    retriable: bool = False


class ConfigError(EvstateError, ValueError):
    """Settings are missing or inconsistent."""


class ValidationError(EvstateError, ValueError):
    """The caller's input was refused before anything was written."""


class InvalidKeyError(ValidationError):
    """A key is empty, contains ``:``, or differs from ``state.id``."""


class InvalidScopeError(ValidationError):
    """A scope name is empty or contains ``:``."""


class InvalidStateError(ValidationError):
    """A state has an unknown status or fields of the wrong type."""


class InvalidRecordError(ValidationError):
    """An Alchemy v2 record (or stack output) that evstate cannot keep: not a JSON object,
    an fqn other than the URL's, or evstate's own sealed-secret marker inside."""


class EventTooLargeError(ValidationError):
    """The encoded event is larger than the broker accepts."""

    def __init__(self, message: str, *, size: int, limit: int) -> None:
        super().__init__(message)
        self.size = size
        self.limit = limit


class SerdeError(EvstateError):
    """A value could not be serialized or deserialized."""


class UnserializableError(SerdeError, TypeError):
    """A value has no JSON form (a socket, a lock, a cycle...); the message names its path."""

    def __init__(self, message: str, *, path: str = "") -> None:
        super().__init__(message)
        self.path = path


class SecretError(SerdeError):
    """A secret was met without a password, or the password is wrong."""


class SealedSecretError(SecretError):
    """A secret sealed by ``evstate serve`` (Alchemy v2) does not open: no secret keys,
    an unknown key id (a key retired too early), or an altered payload. Not the caller's
    fault: the server answers 500."""


class MalformedEventError(SerdeError):
    """Bytes read from Kafka are not an event evstate can decode."""


class UnreadableStateError(SerdeError):
    """A state stored in the view does not decode (e.g. written before markers were checked).

    Reading that key raises it; reading many keys (``all``, ``get_batch``) returns the
    others and reports this one in the result's ``unreadable``.
    """

    def __init__(self, message: str, *, scope: str, key: str, reason: str) -> None:
        super().__init__(message)
        self.scope = scope
        self.key = key
        self.reason = reason


class BrokerError(EvstateError):
    """Running the local Apache Kafka broker failed."""


class JavaNotFoundError(BrokerError):
    """No Java runtime, or one older than 17."""


class MavenNotFoundError(BrokerError):
    """``mvn`` is needed to resolve the broker's jars and was not found."""


class JarResolutionError(BrokerError):
    """Maven could not resolve the broker's jars."""


class PortInUseError(BrokerError):
    """A port the broker needs is already bound."""

    def __init__(self, message: str, *, port: int) -> None:
        super().__init__(message)
        self.port = port


class BrokerAlreadyRunningError(BrokerError):
    """A broker started by evstate already runs in that data dir."""


class BrokerNotRunningError(BrokerError):
    """No broker started by evstate runs in that data dir."""


class BrokerStartTimeout(BrokerError, TimeoutError):
    """The broker did not answer a metadata request in time."""

    def __init__(self, message: str, *, log_tail: str = "") -> None:
        super().__init__(message)
        self.log_tail = log_tail


class KafkaError(EvstateError):
    """Talking to Kafka failed."""


class BrokerUnavailableError(KafkaError, ConnectionError):
    """The bootstrap servers could not be reached in time."""

    retriable = True

    def __init__(self, message: str, *, bootstrap_servers: str = "") -> None:
        super().__init__(message)
        self.bootstrap_servers = bootstrap_servers


class AuthenticationError(KafkaError, PermissionError):
    """Kafka refused the SASL credentials (wrong user or password, or a mechanism it lacks)."""

    def __init__(
        self, message: str, *, bootstrap_servers: str, username: str | None, mechanism: str
    ) -> None:
        super().__init__(message)
        self.bootstrap_servers = bootstrap_servers
        self.username = username
        self.mechanism = mechanism


class NotAuthorizedError(KafkaError, PermissionError):
    """Kafka's ACLs do not let this principal do what was asked (e.g. use a partition's
    transactional id, which writing needs)."""


class TopicMismatchError(KafkaError):
    """A topic exists with a cleanup policy or partition count evstate cannot use."""


class LayoutError(TopicMismatchError):
    """The topics were written with another partition rule than this evstate's.

    Topics written by evstate before the rule placed a scope by its stage hold events of
    nested scopes in other partitions than it looks in: ``evstate migrate`` rewrites them
    in place. Not retriable: the same topics give the same answer until migrated.
    """

    def __init__(self, message: str, *, topic: str, found: str) -> None:
        super().__init__(message)
        self.topic = topic
        self.found = found


class WriteFailedError(KafkaError):
    """The broker did not acknowledge a write; it may be retried."""

    retriable = True


class WriterFencedError(WriteFailedError):
    """Another process registered this partition's transactional ids since the last write.

    The writer takes them back, catches its view up and decides again; a caller sees this
    only when that keeps failing.
    """


class ConflictError(EvstateError):
    """A compare-and-set write found the key at another version; nothing was written."""

    def __init__(self, *, scope: str, key: str, expected: int, actual: int) -> None:
        super().__init__(
            f"{scope}:{key} is at version {actual}, not {expected} as expected; nothing was "
            "written: read it again and retry"
        )
        self.scope = scope
        self.key = key
        self.expected = expected
        self.actual = actual


class ForbiddenError(EvstateError, PermissionError):
    """A principal of ``evstate serve`` has no grant of a permission on a scope.

    Nothing was read or written. The message names the principal, the permission and the
    scope, never a token.
    """

    def __init__(self, principal: str, permission: str, scope: str) -> None:
        super().__init__(
            f"principal {principal!r} may not {permission} scope {scope!r}: no {permission} "
            "grant covers it (see the principals file, `evstate auth check`)"
        )
        self.principal = principal
        self.permission = permission
        self.scope = scope


class LockError(EvstateError):
    """A lock refused a write, a lock, a renewal or a release; nothing was written."""


class LockHeldError(LockError):
    """Someone else holds a lease that covers the scope."""

    def __init__(
        self,
        *,
        scope: str,
        holder: str,
        info: dict[str, object],
        token: int,
        expires_at: datetime,
        wanted: str,
        action: str,
    ) -> None:
        extra = f" ({', '.join(f'{k}={v}' for k, v in info.items())})" if info else ""
        where = "" if wanted == scope else f" (it covers {wanted})"
        super().__init__(
            f"{scope} is locked by {holder}{extra}, token {token}, until "
            f"{expires_at.isoformat(timespec='seconds')}{where}; {action} refused, nothing "
            "was written"
        )
        self.scope = scope
        self.holder = holder
        self.info = info
        self.token = token
        self.expires_at = expires_at


class FencedError(LockError):
    """The caller's lease is no longer the scope's: it was broken, released or taken over."""

    def __init__(self, message: str, *, scope: str, token: int) -> None:
        super().__init__(message)
        self.scope = scope
        self.token = token


class NoSuchLeaseError(LockError):
    """``break_lock`` named a lease that is not (or no longer) held."""

    def __init__(self, message: str, *, scope: str, token: int) -> None:
        super().__init__(message)
        self.scope = scope
        self.token = token


class ViewError(EvstateError):
    """The local RocksDB view failed."""


class ViewLockedError(ViewError):
    """Another process holds the view dir."""

    def __init__(self, message: str, *, path: str) -> None:
        super().__init__(message)
        self.path = path


class ViewUnavailableError(ViewError):
    """The view dir is missing, read-only, or was removed while in use."""

    def __init__(self, message: str, *, path: str) -> None:
        super().__init__(message)
        self.path = path


class ConsistencyTimeout(EvstateError, TimeoutError):
    """The view did not apply the wanted offset in time."""

    retriable = True

    def __init__(
        self,
        *,
        partition: int,
        wanted: int,
        reached: int,
        timeout: float,
        held_at: int | None = None,
        transaction_timeout: float | None = None,
    ) -> None:
        """Args:
        partition, wanted, reached: where the view had to get, and got.
        timeout: the seconds waited.
        held_at: the offset at which an open transaction held the partition, if one did.
        transaction_timeout: the writers' ``transaction_timeout`` (named in the message).
        """
        if held_at is None:
            why = (
                "the consumer may be lagging or the broker unreachable: retry, or raise "
                "read_timeout"
            )
        else:
            within = "" if transaction_timeout is None else f" ({transaction_timeout:g}s)"
            why = (
                f"a transaction left open at offset {held_at} holds the partition, most likely "
                "by a writer that stopped mid-write; the next evstate write to the partition "
                f"aborts it, and the broker does within its transaction timeout{within} plus "
                "its abort check: retry shortly"
            )
        super().__init__(
            f"the view did not reach offset {wanted} of partition {partition} within "
            f"{timeout:g}s (applied up to {reached}); {why}"
        )
        self.partition = partition
        self.wanted = wanted
        self.reached = reached
        self.timeout = timeout
        self.held_at = held_at


class ClosedError(EvstateError, RuntimeError):
    """A client or store was used after it was closed."""
