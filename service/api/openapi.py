"""The OpenAPI 3.1 document, served at `/openapi.json`.

The send routes' bodies come from the same table the API validates them by
(service/core/message_types.py: each field's kind is one rule here and in schemas.py), so a new
message type is documented by its entry; the other routes are listed below, one entry each.
tests/test_openapi.py checks that every route of the app is here and the document is valid.
"""

from __future__ import annotations

import functools
from typing import Any

from service.api import schemas
from service.core.message_types import TYPES, Field, MessageType
from service.core.webhooks import EVENTS

INSTANCE = "/instances/{instance}/token/{token}"

#: What each field kind accepts, as JSON Schema (the rules of schemas.content_field).
KIND_SCHEMAS: dict[str, dict[str, Any]] = {
    "text": {"type": "string", "minLength": 1, "maxLength": schemas.MAX_TEXT_LENGTH},
    "media": {"type": "string", "minLength": 1, "maxLength": schemas.MAX_INLINE_MEDIA,
              "description": "an http(s) URL (fetched when the message goes), a data: URI or base64"},
    "url": {"type": "string", "format": "uri", "pattern": "^https?://", "maxLength": 2048},
    "number": {"type": "number"},
    "bool": {"type": "boolean"},
    "object": {"type": "object"},
    "list": {"type": "array", "minItems": 1},
    "phone": {"type": "string", "description": "a phone number with its country code", "maxLength": 40},
}

COMMON_FIELDS: dict[str, dict[str, Any]] = {
    "phone": {"type": ["string", "integer"], "description": "10 to 15 digits with country code (+, spaces, "
              "dashes and brackets ignored), or a WhatsApp id (…@s.whatsapp.net, …@g.us, …-group)"},
    "delayMessage": {"type": "number", "minimum": 0, "maximum": schemas.MAX_DELAY_MESSAGE_SECONDS,
                     "description": "seconds after the previous message of the instance"},
    "delayTyping": {"type": "number", "minimum": 0, "maximum": schemas.MAX_DELAY_TYPING_SECONDS,
                    "description": "seconds of typing… (recording… for audio) shown before it"},
    "scheduledFor": {"type": "string", "format": "date-time", "description": "not before (with a time zone)"},
    "messageId": {"type": "string", "minLength": 1, "maxLength": 200,
                  "description": "the WhatsApp id of a message this one replies to (a reaction: the one it reacts to)"},
}

ERROR = {"$ref": "#/components/schemas/Error"}


#: The other body shapes a send route takes (zedaapi's clients'), said in its summary.
ALTERNATIVE_SHAPES = {
    "button-list": "; or zedaapi's shape: top-level `buttons: [{id, title}]`, `title`, `footer`",
    "option-list": "; or zedaapi's shape: `sections: [{title, rows: [{id, title, description}]}]`, "
                   "`buttonLabel`, `title`, `footer`",
    "document": "; without `/{extension}`, the extension is taken from `fileName`, the URL or the data: URI",
}


def _body_schema(message_type: MessageType, route: str) -> dict[str, Any]:
    path_fields = {name.strip("{}") for name in route.split("/") if name.startswith("{")}
    fields: list[Field] = [f for f in message_type.fields if f.name not in path_fields]
    return {
        "type": "object",
        "properties": {**COMMON_FIELDS, **{f.name: KIND_SCHEMAS[f.kind] for f in fields}},
        "required": ["phone", *(f.name for f in fields if f.required)],
    }


def _errors(*statuses: int) -> dict[str, Any]:
    return {str(s): {"description": "an error naming the field", "content": {"application/json": {"schema": ERROR}}}
            for s in statuses}


def _op(summary: str, *, body: dict[str, Any] | None = None, answer: dict[str, Any] | None = None,
        statuses: tuple[int, ...] = (400, 401), params: list[dict[str, Any]] | None = None,
        ok: str = "200", admin: bool = False) -> dict[str, Any]:
    operation: dict[str, Any] = {
        "summary": summary,
        "responses": {ok: {"description": "done", **({"content": {"application/json": {"schema": answer}}}
                                                    if answer else {})},
                      **_errors(*statuses, 503)},
    }
    if body is not None:
        operation["requestBody"] = {"required": True, "content": {"application/json": {"schema": body}}}
    if params:
        operation["parameters"] = params
    if admin:
        operation["security"] = [{"admin": []}]
    return operation


def _path_params(path: str) -> list[dict[str, Any]]:
    return [{"name": part.strip("{}"), "in": "path", "required": True, "schema": {"type": "string"}}
            for part in path.split("/") if part.startswith("{")]


def _query(name: str, kind: str = "integer") -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "schema": {"type": kind}}


HEADERS = [
    {"name": "Client-Token", "in": "header", "required": False, "schema": {"type": "string"},
     "description": "required when the instance has one"},
]
SEND_HEADERS = [*HEADERS, {"name": "Idempotency-Key", "in": "header", "required": False,
                           "schema": {"type": "string", "minLength": 1, "maxLength": 255},
                           "description": "the same key and request within 24 h: the first answer, nothing stored"}]


def _routes() -> dict[str, dict[str, Any]]:
    """Every route but the send routes: path → method → operation."""
    url_value = {"type": "object", "properties": {"value": {"type": ["string", "null"]}}, "required": ["value"]}
    webhook_routes = {f"{INSTANCE}/update-webhook-{event}": {"put": _op(f"set the {event} webhook", body=url_value)}
                      for event in EVENTS}
    return {
        "/healthz": {"get": _op("the process is up", statuses=())},
        "/readyz": {"get": _op("the database is reachable and migrated", statuses=())},
        "/openapi.json": {"get": _op("this document", statuses=())},
        "/docs": {"get": _op("this document as a web page (HTML)", statuses=())},
        "/metrics": {"get": _op("Prometheus metrics (text format)", statuses=())},
        "/instances": {
            "post": _op("create an instance", admin=True, ok="201", body={"type": "object", "properties": {
                "name": {"type": "string"}, "clientToken": {"type": "string"}, "transport": {"type": "string"},
                "maxMessagesPerMinute": {"type": "integer", "minimum": 1}}}),
            "get": _op("list the instances", admin=True),
        },
        "/instances/{instance}": {"delete": _op("remove an instance (409 while it has messages to send)",
                                                admin=True, statuses=(400, 401, 404, 409),
                                                params=[_query("force", "boolean")])},
        "/instances/{instance}/rotate-token": {"post": _op("a new token for the instance", admin=True,
                                                           statuses=(401, 404))},
        f"{INSTANCE}/queue": {
            "get": _op("the instance's messages in order: those still to send (status=pending, the default), "
                       "status=all, or one status", answer={"$ref": "#/components/schemas/QueuePage"},
                       params=[_query("limit"), _query("offset"), _query("page"), _query("pageSize"),
                               _query("status", "string")]),
            "post": _op("Z-API's cursor paging of the messages still to send",
                        answer={"$ref": "#/components/schemas/QueueCursorPage"},
                        body={"type": "object", "properties": {
                            "pageSize": {"type": "integer", "minimum": 1, "maximum": 500},
                            "pagingState": {"type": ["string", "null"],
                                            "description": "the pagingState of the previous answer"}}}),
            "delete": _op("cancel every message still to send"),
        },
        f"{INSTANCE}/queue/count": {"get": _op("how many messages are still to send")},
        f"{INSTANCE}/queue/stats": {"get": _op("counts per status")},
        f"{INSTANCE}/queue/{{zaap_id}}": {
            "get": _op("one message, with its history", answer={"$ref": "#/components/schemas/Message"},
                       statuses=(401, 404)),
            "delete": _op("cancel one message (409 once it is being sent)", statuses=(401, 404, 409)),
        },
        f"{INSTANCE}/pause": {"post": _op("stop dispatching the instance's messages")},
        f"{INSTANCE}/resume": {"post": _op("dispatch them again")},
        f"{INSTANCE}/status": {"get": _op("connection state, paused, queue depth")},
        f"{INSTANCE}/qr-code": {"get": _op("the pairing QR code (starts a pairing attempt)", statuses=(401, 409))},
        f"{INSTANCE}/qr-code/image": {"get": _op("the pairing QR code as a PNG", statuses=(401, 409))},
        f"{INSTANCE}/phone-code/{{phone}}": {"get": _op("a code to pair from the phone", statuses=(400, 401, 409))},
        f"{INSTANCE}/disconnect": {"post": _op("log out of WhatsApp", statuses=(401, 409))},
        f"{INSTANCE}/restart": {"post": _op("reconnect", statuses=(401, 409))},
        **webhook_routes,
        f"{INSTANCE}/update-every-webhooks": {"put": _op("set every webhook to one URL", body=url_value)},
        f"{INSTANCE}/webhooks": {"get": _op("the webhook URLs and signing secret")},
        f"{INSTANCE}/rotate-webhook-secret": {"post": _op(
            "a new webhook signing secret (the previous one also signs for WEBHOOK_SECRET_GRACE)")},
        f"{INSTANCE}/webhook-deliveries": {"get": _op("the latest webhook deliveries", params=[_query("limit")])},
        "/simulator/instances/{instance}": {"post": _op("simulator knobs", admin=True, body={"type": "object"})},
        "/simulator/instances/{instance}/events": {"get": _op("what the simulator saw", admin=True)},
        "/simulator/instances/{instance}/receipts": {"post": _op("a phone's receipt, simulated", admin=True,
                                                                 body={"type": "object"})},
    }


@functools.cache
def document() -> dict[str, Any]:
    """Built once per process: it follows from the code alone."""
    paths = _routes()
    sends = set()
    for message_type in TYPES.values():
        for route in (message_type.route, *message_type.aliases):
            path = f"{INSTANCE}/{route}"
            sends.add(path)
            paths[path] = {"post": _op(
                f"send a {message_type.name} message" + (ALTERNATIVE_SHAPES.get(message_type.name, "")),
                body=_body_schema(message_type, route), answer={"$ref": "#/components/schemas/SendAnswer"},
                statuses=(400, 401, 413, 422, 429))}
    for path, methods in paths.items():
        for operation in methods.values():
            params = [*operation.get("parameters", []), *_path_params(path)]
            if path.startswith(INSTANCE):
                params += SEND_HEADERS if path in sends else HEADERS
            unique = {(p["name"], p["in"]): p for p in params}
            if unique:
                operation["parameters"] = list(unique.values())
    return {
        "openapi": "3.1.0",
        "info": {"title": "WhatsApp message queue", "version": "1",
                 "description": "Z-API-compatible sends, in strict order per instance, with delays and typing."},
        "paths": paths,
        "components": {
            "securitySchemes": {"admin": {"type": "http", "scheme": "bearer"}},
            "schemas": {
                "Error": {"type": "object", "properties": {"error": {"type": "string"}, "field": {"type": "string"}},
                          "required": ["error", "field"]},
                "SendAnswer": {"type": "object", "properties": {
                    "zaapId": {"type": "string"}, "messageId": {"type": "string"}, "id": {"type": "string"},
                    "status": {"type": "string"}, "sequence": {"type": "integer"},
                    "scheduledFor": {"type": "string", "format": "date-time"},
                    "whatsAppStatus": {"type": "object", "properties": {
                        "connected": {"type": "boolean"},
                        "reason": {"type": "string", "description": "`connected`, or why not"}}}},
                    "required": ["zaapId", "messageId", "id", "status", "sequence", "scheduledFor"]},
                "Message": {"type": "object", "properties": {
                    "zaapId": {"type": "string"}, "sequence": {"type": "integer"}, "status": {"type": "string"},
                    "messageType": {"type": "string"}, "phone": {"type": "string"}, "content": {"type": "object"},
                    "attempts": {"type": "integer"}, "lastError": {"type": ["string", "null"]}}},
                "QueuePage": {"type": "object", "properties": {
                    "size": {"type": "integer"}, "total": {"type": "integer"}, "limit": {"type": "integer"},
                    "offset": {"type": "integer"}, "page": {"type": "integer"}, "pageSize": {"type": "integer"},
                    "messages": {"type": "array", "items": {"$ref": "#/components/schemas/QueueEntry"}}}},
                "QueueCursorPage": {"type": "object", "properties": {
                    "messages": {"type": "array", "items": {"$ref": "#/components/schemas/QueueEntry"}},
                    "hasMore": {"type": "boolean"}, "pagingState": {"type": ["string", "null"]}}},
                "QueueEntry": {"type": "object", "description": "a Message, with the keys of Z-API's queue answer",
                               "allOf": [{"$ref": "#/components/schemas/Message"}], "properties": {
                    "_id": {"type": "string"}, "ZaapId": {"type": "string"}, "MessageId": {"type": "string"},
                    "InstanceId": {"type": "string"}, "Phone": {"type": "string"}, "Message": {"type": "string"},
                    "DelayMessage": {"type": "integer"}, "DelayTyping": {"type": "integer"},
                    "Created": {"type": "integer", "description": "epoch milliseconds"},
                    "CreatedAt": {"type": "string"}, "IsTrial": {"type": "boolean"}}},
            },
        },
    }
