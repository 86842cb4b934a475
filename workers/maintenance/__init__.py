"""Upkeep that no request triggers: one loop per worker process, one leader at a time (an
advisory lock per task and round), each task a small module (its tests: tests/fast/test_maintenance.py).

- `rescuer`: messages of dead workers (I5), and sessions of dead holders.
- `dispatcher`: heads that should be in the broker and are not.
- `retention`: finished messages past `MESSAGE_QUEUE_RETENTION_PERIOD`.

Transports add tasks for records of their own (workers/transports `TransportSpec.maintenance`).
"""

from workers.maintenance.loop import MaintenanceLoop, Task, core_tasks

__all__ = ["MaintenanceLoop", "Task", "core_tasks"]
