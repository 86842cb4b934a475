"""Worker side: the broker, the ordering middleware, the delivery actor, maintenance, transports."""
