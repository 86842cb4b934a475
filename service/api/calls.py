"""Request helpers every route module shares: the core, calls to it off the event loop, and
request bodies parsed where their size says (small ones inline, large ones in a thread)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request

from service.api import schemas
from service.core.context import Core

T = TypeVar("T")

#: A request body up to this size is parsed and validated on the event loop (microseconds); a
#: larger one (inline media, up to API_MAX_BODY_BYTES) in a thread, so the loop keeps answering.
INLINE_PARSE_BYTES = 64 * 1024


def core(request: Request) -> Core:
    return request.app.state.core  # type: ignore[no-any-return]


async def call(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    return await run_in_threadpool(fn, *args, **kwargs)


async def parsed(raw: bytes, parse: Callable[..., T], *args: Any) -> T:
    """`parse(*args)` of a request body `raw`: inline when it is small, in a thread when it is
    larger than INLINE_PARSE_BYTES."""
    if len(raw) > INLINE_PARSE_BYTES:
        return await run_in_threadpool(parse, *args)
    return parse(*args)


async def json_object(request: Request, *, optional: bool = False) -> dict[str, Any]:
    """The request's body as a JSON object (`optional`: an empty body is `{}`), parsed as `parsed` says."""
    raw = await request.body()
    if optional and not raw.strip():
        return {}
    return await parsed(raw, schemas.parse_json_object, raw)
