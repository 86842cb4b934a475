"""The operator's dashboard at /dashboard (admin only): instances with the stuck ones first, one
instance's queue and actions, a message's history, recent failures, throughput and lateness,
the workers. Its routes, in one list; pages and actions in pages.py, the login in login.py."""

from __future__ import annotations

from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from service.api.dashboard import pages as p
from service.api.templating import ASSETS


def routes() -> list[BaseRoute]:
    return [
        Route("/dashboard", p.home),
        Route("/dashboard/login", p.login_form, methods=["GET"]),
        Route("/dashboard/login", p.login_submit, methods=["POST"]),
        Route("/dashboard/logout", p.logout, methods=["POST"]),
        Route("/dashboard/throughput.json", p.throughput),
        Route("/dashboard/failures", p.failures_page),
        Route("/dashboard/workers", p.workers_page),
        Route("/dashboard/instances/{instance}", p.instance_page),
        Route("/dashboard/instances/{instance}/qr", p.qr_page),
        Route("/dashboard/instances/{instance}/pause", p.pause, methods=["POST"]),
        Route("/dashboard/instances/{instance}/resume", p.resume, methods=["POST"]),
        Route("/dashboard/instances/{instance}/cancel-all", p.cancel_all, methods=["POST"]),
        Route("/dashboard/instances/{instance}/reconnect", p.reconnect, methods=["POST"]),
        Route("/dashboard/instances/{instance}/rotate-webhook-secret", p.rotate_webhook_secret, methods=["POST"]),
        Route("/dashboard/messages/{zaap_id}", p.message_page),
        Route("/dashboard/messages/{zaap_id}/cancel", p.cancel_message, methods=["POST"]),
        Route("/dashboard/messages/{zaap_id}/retry", p.retry_message, methods=["POST"]),
        # The dashboard's and the API docs' CSS and JavaScript, from the package (no CDN).
        Mount("/assets", StaticFiles(directory=ASSETS), name="assets"),
    ]
