"""Worker side: the broker, the ordering middleware, the delivery actor, maintenance, transports."""

import os

# Dramatiq restarts a consumer that lost its database connection after 3 s (read once, when
# dramatiq is imported); half a second keeps a worker within a second of the database's return.
os.environ.setdefault("dramatiq_restart_delay", "500")
