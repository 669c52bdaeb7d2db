"""Kafka ACLs: creating allow-bindings over the admin's connection (CreateAcls), for
``evstate broker start --acl``. aiokafka has the request but no admin method for it."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final, Literal

import aiokafka.errors as kerr
from aiokafka.protocol.admin import CreateAclsRequest

from evstate.config import Settings
from evstate.errors import KafkaError
from evstate.kafka._errors import translated
from evstate.kafka.admin import Admin

__all__ = ["Acl", "create_acls"]

ResourceType = Literal["topic", "group", "cluster", "transactional_id"]
Operation = Literal[
    "all", "read", "write", "create", "describe", "describe_configs", "idempotent_write"
]

# Kafka's wire codes (org.apache.kafka.common.resource / acl).
_RESOURCE: Final[dict[str, int]] = {"topic": 2, "group": 3, "cluster": 4, "transactional_id": 5}
_OPERATION: Final[dict[str, int]] = {
    "all": 2,
    "read": 3,
    "write": 4,
    "create": 5,
    "describe": 8,
    "describe_configs": 10,
    "idempotent_write": 12,
}
_LITERAL: Final = 3
_ALLOW: Final = 3


@dataclass(frozen=True, slots=True)
class Acl:
    """One allow-binding: ``principal`` may do ``operation`` on a resource.

    ``name`` ``"*"`` is Kafka's wildcard (every resource of the type); the cluster's
    resource is named ``kafka-cluster``.
    """

    principal: str  # "User:serve"
    resource: ResourceType
    name: str
    operation: Operation


async def create_acls(settings: Settings, acls: Sequence[Acl]) -> None:
    """Create ``acls`` (creating one that exists changes nothing).

    ``settings`` must log in as a principal allowed to alter ACLs (a super user).

    Raises:
        KafkaError: the broker refused one (the message says which and why).
        BrokerUnavailableError: nothing answered.
    """
    admin = Admin(settings)
    await admin.start()
    try:
        client = admin._admin._client  # aiokafka's admin has no ACL methods
        for acl in acls:  # aiokafka's request carries one binding
            with translated(settings):
                request = CreateAclsRequest(
                    _RESOURCE[acl.resource],
                    acl.name,
                    _LITERAL,
                    acl.principal,
                    "*",
                    _OPERATION[acl.operation],
                    _ALLOW,
                )
                response = await client.send(client.get_random_node(), request)
            for code, message in response.creation_responses:
                if code:
                    raise KafkaError(
                        f"the broker refused ACL {acl}: {kerr.for_code(code).__name__} "
                        f"{message or ''}".rstrip()
                    )
    finally:
        await admin.stop()
