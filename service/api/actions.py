"""What the HTTP routes and the dashboard both do: cancel (counted in /metrics), switch a
controlled (simulated) instance, ask a session's holder, draw a QR code. Neither side borrows
from the other: both import these."""

from __future__ import annotations

import io
from typing import Any
from uuid import UUID

from starlette.requests import Request

from service.api import metrics
from service.api.calls import call, core
from service.core import control, instances, session_commands
from service.core.models import Instance


async def cancel_counted(request: Request, zaap_id: str) -> str:
    """Cancel one message (the routes' and the dashboard's way), counted in /metrics; the status
    it had."""
    previous = await call(control.cancel, core(request), zaap_id)
    metrics.CANCELLED.inc()
    return previous


async def cancel_all_counted(request: Request, instance_id: UUID) -> int:
    """Cancel every pending message of an instance, counted in /metrics; how many."""
    count = await call(control.cancel_all, core(request), instance_id)
    metrics.CANCELLED.inc(count)
    return count


def transport_control(request: Request, transport: str) -> Any | None:
    """The API-side control of a transport that has no WhatsApp session to ask (the simulator:
    workers/transports/simulator.py `SimulatorControl`), given to create_app; None for a
    session transport, whose holder is asked through the core (`session_commands.ask`)."""
    return request.app.state.controls.get(transport)


def simulator(request: Request) -> Any:
    return request.app.state.controls["simulator"]


async def switch(request: Request, control_: Any, instance_id: UUID, **knobs: Any) -> dict[str, Any]:
    """Set a controlled instance's knobs; flipping `connected` is a connection event."""
    await call(instances.get, core(request), instance_id)
    state = await call(control_.configure, instance_id, **knobs)
    if knobs.get("connected") is not None:
        await call(control.set_connection, core(request), instance_id,
                   "connected" if knobs["connected"] else "disconnected", "simulator switch")
        request.app.state.instances.forget(instance_id)  # the send answer's whatsAppStatus
    return state  # type: ignore[no-any-return]


async def session_action(request: Request, instance: Instance, command: str, connected: bool) -> None:
    """A session transport's holder runs `command`; a controlled one (the simulator) is switched."""
    controlled = transport_control(request, instance.transport)
    if controlled is not None:
        await switch(request, controlled, instance.id, connected=connected)
    else:
        await call(session_commands.ask, core(request), instance.id, command)


def qr_png(text: str) -> bytes:
    import segno

    buffer = io.BytesIO()
    segno.make_qr(text, error="L").save(buffer, kind="png", scale=6, border=2)
    return buffer.getvalue()
