"""Real WhatsApp through neonize (whatsmeow, a Go library inside the wheel).

Importing anything from `neonize` loads the Go library, whose panics end the process: only
worker processes import these modules, and tests run them in subprocesses.
"""

import threading

#: Held for every first import of the Go library's modules. Python's import locks are per
#: module, so a message thread importing `transport` while the session manager imports
#: `sessions` can see a partly initialised `neonize.utils` (an ImportError that cost a message an
#: attempt).
IMPORT_LOCK = threading.Lock()
