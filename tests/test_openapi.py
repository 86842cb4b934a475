"""The OpenAPI 3.1 document at /openapi.json: valid, complete (every route of the app), and
describing the send bodies the API really accepts and refuses."""

from __future__ import annotations

from typing import Any

import jsonschema
from openapi_spec_validator import validate
from starlette.routing import Route

from service.api.app import routes
from service.core.message_types import TYPES
from service.settings import Settings
from tests.stack import Stack
from tests.test_message_types import BODIES


def send_schema(document: dict[str, Any], route: str) -> dict[str, Any]:
    operation = document["paths"][f"/instances/{{instance}}/token/{{token}}/{route}"]["post"]
    return operation["requestBody"]["content"]["application/json"]["schema"]  # type: ignore[no-any-return]


def test_the_document_is_valid_and_names_every_route(stack: Stack) -> None:
    document = stack.http.get("/openapi.json").json()
    validate(document)
    assert document["openapi"] == "3.1.0"
    # The dashboard's pages and assets are for browsers, not part of the API.
    served = {(route.path, method.lower()) for route in routes(Settings(whatsapp_transport="simulator"))
              if isinstance(route, Route) and not route.path.startswith("/dashboard")
              for method in (route.methods or set()) - {"HEAD"}}
    documented = {(path, method) for path, methods in document["paths"].items() for method in methods}
    assert served == documented, (served - documented, documented - served)


def test_send_bodies_are_documented_as_the_api_checks_them(stack: Stack) -> None:
    """Each type's example body fits its documented schema and is accepted; without a required
    field it fits no longer, and the API refuses it naming that field."""
    document = stack.http.get("/openapi.json").json()
    instance = stack.create_instance()
    for name, (route, fields) in BODIES.items():
        schema_route = route if name != "document" else "send-document/{extension}"
        schema = send_schema(document, schema_route)
        body = {"phone": "5511999999999", **fields}
        jsonschema.validate(body, schema)
        assert set(schema["required"]) == {"phone", *(f.name for f in TYPES[name].fields
                                                      if f.required and f.name != "extension")}
        for required in schema["required"]:
            partial = {k: v for k, v in body.items() if k != required}
            assert not jsonschema.Draft202012Validator(schema).is_valid(partial)
            refused = stack.http.post(f"{stack.base(instance)}/{route}", json=partial)
            assert (refused.status_code, refused.json()["field"]) == (400, required), (name, required, refused.text)
        accepted = stack.http.post(f"{stack.base(instance)}/{route}", json={**body, "delayMessage": 3600})
        assert accepted.status_code == 200, (name, accepted.text)
        jsonschema.validate(accepted.json(), document["components"]["schemas"]["SendAnswer"])
