"""Service side: the HTTP API, settings, database plumbing and the queue core."""
