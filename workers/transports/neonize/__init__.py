"""Real WhatsApp through neonize (whatsmeow, a Go library inside the wheel).

Importing anything from `neonize` loads the Go library, whose panics end the process: only
worker processes import these modules, and tests run them in subprocesses.
"""
