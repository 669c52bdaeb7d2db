"""Run a real Apache Kafka broker (KRaft) on this machine: ``evstate broker start``."""

from evstate.broker.cluster import LocalBroker
from evstate.broker.properties import DEFAULT_PORT, NodeStatus, server_properties
from evstate.broker.runtime import KAFKA_VERSION, find_java, kafka_jars

__all__ = [
    "DEFAULT_PORT",
    "KAFKA_VERSION",
    "LocalBroker",
    "NodeStatus",
    "find_java",
    "kafka_jars",
    "server_properties",
]
