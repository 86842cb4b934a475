"""`/docs`: the OpenAPI document (service/api/openapi.py) as a web page, rendered on the server
from that very document (one source for both), with no script and nothing from a CDN."""

from __future__ import annotations

import json
from functools import cache
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from service.api.openapi import document
from service.api.templating import TEMPLATES

#: Sections of the page, by the first path that matches; the rest go under "Service".
SECTIONS = (
    ("Sending", "/send-"),
    ("Queue", "/queue"),
    ("Instance control", ("/pause", "/resume", "/status")),
    ("WhatsApp connection", ("/qr-code", "/phone-code", "/disconnect", "/restart")),
    ("Webhooks", ("webhook",)),
    ("Instances (admin)", ("/instances",)),
    ("Simulator (admin, simulator only)", ("/simulator",)),
)


def _type(schema: dict[str, Any]) -> str:
    if "$ref" in schema:
        return schema["$ref"].rsplit("/", 1)[-1]
    kind = schema.get("type", "any")
    text = " or ".join(kind) if isinstance(kind, list) else kind
    if "enum" in schema:
        text += " (" + ", ".join(json.dumps(v) for v in schema["enum"]) + ")"
    if "format" in schema:
        text += f", {schema['format']}"
    bounds = [f"{k} {schema[k]}" for k in ("minimum", "maximum", "minLength", "maxLength") if k in schema]
    return text + (f"; {', '.join(bounds)}" if bounds else "")


def _fields(schema: dict[str, Any]) -> list[dict[str, Any]]:
    required = set(schema.get("required", ()))
    return [{"name": name, "type": _type(spec), "required": name in required,
             "description": spec.get("description", "")} for name, spec in schema.get("properties", {}).items()]


def _section(path: str) -> str:
    for title, needles in SECTIONS:
        if any(n in path for n in ((needles,) if isinstance(needles, str) else needles)):
            return title
    return "Service"


@cache
def model() -> dict[str, Any]:
    """The page's content: operations grouped by section, in the document's order, and the schemas."""
    doc = document()
    sections: dict[str, list[dict[str, Any]]] = {title: [] for title, _ in SECTIONS}
    sections["Service"] = []
    for path, methods in doc["paths"].items():
        for method, op in methods.items():
            body = op.get("requestBody", {}).get("content", {}).get("application/json", {}).get("schema")
            sections[_section(path)].append({
                "id": f"{method}-{path}".replace("/", "-").replace("{", "").replace("}", ""),
                "method": method.upper(), "path": path, "summary": op.get("summary", ""),
                "admin": bool(op.get("security")),
                "params": [{"name": p["name"], "in": p["in"], "required": p.get("required", False),
                            "type": _type(p.get("schema", {})), "description": p.get("description", "")}
                           for p in op.get("parameters", [])],
                "body": _fields(body) if body else None,
                "responses": [{"status": status, "description": answer.get("description", ""),
                               "schema": _type(answer["content"]["application/json"]["schema"])
                               if "content" in answer else ""}
                              for status, answer in op.get("responses", {}).items()],
            })
    schemas = [{"name": name, "fields": _fields(schema)} for name, schema in doc["components"]["schemas"].items()]
    return {"info": doc["info"], "sections": {k: v for k, v in sections.items() if v}, "schemas": schemas}


async def page(request: Request) -> Response:
    response: Response = TEMPLATES.TemplateResponse(request, "docs.html", {**model(), "csrf": ""})
    response.headers["Content-Security-Policy"] = "default-src 'self'; frame-ancestors 'none'"
    return response

