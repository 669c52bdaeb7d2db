"""The Kafka adapter: the only package that imports aiokafka.

Split by role, each module small:

* ``_connect`` — connection options, starting and stopping aiokafka objects, the probe;
* ``_errors`` — the one table that turns aiokafka's errors into evstate's;
* :mod:`~evstate.kafka.produce` — :class:`Producer` (idempotent) and
  :class:`TransactionalProducer` (atomic batches over several topics);
* :mod:`~evstate.kafka.consume` — :class:`Tail` (the view's reader) and :class:`GroupTail`
  (watchers, in consumer groups);
* :mod:`~evstate.kafka.admin` — :class:`Admin`: topics created with explicit settings,
  peeked into, deleted and made again;
* :mod:`~evstate.kafka.bulk` — :class:`BulkProducer`: records copied as they are.

No aiokafka exception leaves this package; each is re-raised as an
:mod:`evstate.errors` class ``from`` the original. Importing it changes nothing in
aiokafka: every tuning is per instance.
"""

from evstate.kafka._connect import client_options, count_brokers
from evstate.kafka.admin import Admin, Peek, TopicSpec
from evstate.kafka.bulk import BulkProducer
from evstate.kafka.consume import Assignments, GroupTail, Record, Tail
from evstate.kafka.produce import (
    BATCH_BYTES,
    DEFAULT_MAX_MESSAGE_BYTES,
    RECORD_OVERHEAD,
    Headers,
    OutRecord,
    Producer,
    TransactionalProducer,
)

__all__ = [
    "BATCH_BYTES",
    "DEFAULT_MAX_MESSAGE_BYTES",
    "RECORD_OVERHEAD",
    "Admin",
    "Assignments",
    "BulkProducer",
    "GroupTail",
    "Headers",
    "OutRecord",
    "Peek",
    "Producer",
    "Record",
    "Tail",
    "TopicSpec",
    "TransactionalProducer",
    "client_options",
    "count_brokers",
]
