"""evstate: an event-sourced state store for infrastructure-as-code tools.

Alchemy's ``StateStore`` contract, kept as Avro events on Apache Kafka and served from a
local RocksDB view. How to use it: README.md; how it works and which module does what:
docs/design.md.
"""

from evstate.client import ClientState, EvstateClient, StoreFactory, store_factory
from evstate.config import Settings
from evstate.errors import (
    ConflictError,
    ConsistencyTimeout,
    EvstateError,
    FencedError,
    ForbiddenError,
    LockHeldError,
    NoSuchLeaseError,
)
from evstate.locks import HeldLease
from evstate.model import ChangeEvent, Consistency, Lease, Position, Scope, State
from evstate.serde import Secret
from evstate.store import KafkaStateStore, States
from evstate.watch import WatchedEvent, Watcher

__all__ = [
    "ChangeEvent",
    "ClientState",
    "ConflictError",
    "Consistency",
    "ConsistencyTimeout",
    "EvstateClient",
    "EvstateError",
    "FencedError",
    "ForbiddenError",
    "HeldLease",
    "KafkaStateStore",
    "Lease",
    "LockHeldError",
    "NoSuchLeaseError",
    "Position",
    "Scope",
    "Secret",
    "Settings",
    "State",
    "States",
    "StoreFactory",
    "WatchedEvent",
    "Watcher",
    "store_factory",
]
