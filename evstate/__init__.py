"""evstate: an event-sourced state store for infrastructure-as-code tools.

Alchemy's ``StateStore`` contract, kept as Avro events on Apache Kafka and served from a
local RocksDB view. See README.md and DESIGN.md.
"""

from evstate.client import ClientState, Consistency, EvstateClient
from evstate.config import Settings
from evstate.errors import ConsistencyTimeout, EvstateError
from evstate.model import ChangeEvent, Position, Scope, State
from evstate.serde import Secret
from evstate.store import KafkaStateStore, States, StoreFactory, store_factory
from evstate.watch import WatchedEvent, Watcher

__all__ = [
    "ChangeEvent",
    "ClientState",
    "Consistency",
    "ConsistencyTimeout",
    "EvstateClient",
    "EvstateError",
    "KafkaStateStore",
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
