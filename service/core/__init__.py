"""The queue core, shared by the API and the workers. It knows no HTTP, no actor, no transport.

One module per concept, each a few plain functions over a `Core` (the pool and the settings):

- `instances`: create, read, list, remove instances (WhatsApp accounts) and their queues.
- `enqueue`: accept one message (the send routes' one database call).
- `reads`: what the API shows: one message with its history, a queue page, stats, status.
- `control`: cancel, cancel all, pause, resume, connection changes.
- `transitions`: what a worker does to a message: claim, typing, complete, fail, snooze.
- `sessions`: what the process holding WhatsApp sessions records and is asked to do.
- `maintenance`: the leader's tasks: rescue, orphaned heads, retention.
- `routing`: which broker queues and actors a dispatch names.
- `message_types`: the message-type table (one entry per type).
- `context` (`Core`), `models` (what goes in and out), `errors` (what can go wrong, by kind).
- `queries`: every SQL statement the Python side runs; the state machine itself is
  `service/sql/functions/` (docs/architecture.md).
"""

from service.core.context import Core

__all__ = ["Core"]
