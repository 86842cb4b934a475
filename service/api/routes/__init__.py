"""The HTTP routes, one module per group; `service/api/app.py` lists every route in one table."""
