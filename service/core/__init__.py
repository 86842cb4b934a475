"""The queue core shared by the API and the workers (DESIGN.md §3)."""

from service.core.coordinator import Coordinator

__all__ = ["Coordinator"]
