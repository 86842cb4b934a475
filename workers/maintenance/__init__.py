"""Upkeep that no request triggers (DESIGN.md §3.7): one loop per worker process, one leader
at a time (an advisory lock per task), each task a small module.

- `rescuer`: messages of dead workers (R5).
- `dispatcher`: heads that should be in the broker and are not.
- `retention`: finished messages past `MESSAGE_QUEUE_RETENTION_PERIOD`.
"""

from workers.maintenance.loop import MaintenanceLoop

__all__ = ["MaintenanceLoop"]
