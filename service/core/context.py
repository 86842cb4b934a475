"""`Core`: what every core operation needs, the database pools and the settings."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Any

from psycopg_pool import AsyncConnectionPool, ConnectionPool

from service.core.routing import Route
from service.db.pools import fetch_all, fetch_one, fetch_one_async
from service.settings import Settings


@dataclass(frozen=True)
class Core:
    """The pools (the API also has an async one for its send path) and the settings.

    Each core function takes it first: `transitions.claim(core, …)`."""

    pool: ConnectionPool
    settings: Settings
    async_pool: AsyncConnectionPool | None = None

    @cached_property
    def route(self) -> Route:
        return Route.from_settings(self.settings)

    def one(self, sql: str, **params: Any) -> dict[str, Any] | None:
        return fetch_one(self.pool, sql, params)

    def all(self, sql: str, **params: Any) -> list[dict[str, Any]]:
        return fetch_all(self.pool, sql, params)

    async def one_async(self, sql: str, **params: Any) -> dict[str, Any] | None:
        assert self.async_pool is not None, "this Core has no async pool (the API's send path has one)"
        return await fetch_one_async(self.async_pool, sql, params)
