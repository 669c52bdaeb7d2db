"""evstate: an event-sourced state store for infrastructure-as-code tools."""

from evstate.errors import EvstateError

__all__ = ["EvstateError"]
