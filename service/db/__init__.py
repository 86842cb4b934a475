"""Database plumbing, one module each: connection pools (`pools`), the migrations runner
(`migrations`: `service/sql/migrations/`, then the definitions of `service/sql/functions/`), and
the embedded PostgreSQL of `make run` and the tests (`embedded`)."""
