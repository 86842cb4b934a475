"""The running API fuzzed from its own OpenAPI document (hypothesis, derandomized: the same
examples every run, the failing one printed): bodies drawn from each send route's schema and
arbitrary JSON, hostile headers and query strings. Never a 5xx; a refused request stores
nothing; an accepted one answers as documented and is stored."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import jsonschema
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from service.core.message_types import TYPES
from tests.stack import Stack

FUZZ = settings(max_examples=30, deadline=None, derandomize=True, database=None,
                suppress_health_check=list(HealthCheck))

# NaN and ±Infinity included: Python's json writes and reads them, JSON and PostgreSQL have none (400).
JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=30),
                    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner,
                                                                                max_size=4), max_leaves=12)


#: What an HTTP client can put in a header value: visible ASCII and Latin-1, spaces, tabs.
HEADER_TEXT = st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0xFF, exclude_characters="\x7f"),
                      max_size=300)


PNG = ("data:image/png;base64,"
       "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg==")


def valid_for(schema: dict[str, Any]) -> st.SearchStrategy[Any]:
    """What a property describes (so that many examples are accepted and stored)."""
    kinds = schema.get("type")
    kinds = kinds if isinstance(kinds, list) else [kinds]
    description = schema.get("description", "")
    if "10 to 15 digits" in description or "country code" in description:
        return st.sampled_from(["5511999999999", "+55 (11) 98888-7777", "1 650 253 0000", "120363025246125244@g.us"])
    if "http(s) URL" in description:
        return st.sampled_from(["https://example.com/a.png", PNG, "aGVsbG8="])
    if schema.get("format") == "uri":
        return st.sampled_from(["https://example.com/a", "http://127.0.0.1:9/x"])
    if schema.get("format") == "date-time":
        return st.integers(60, 10**7).map(lambda s: (datetime.now(UTC) + timedelta(seconds=s)).isoformat())
    if "number" in kinds:
        low, high = schema.get("minimum", -1e6), schema.get("maximum", 1e6)
        return st.floats(min_value=low, max_value=high, allow_nan=False)
    if "boolean" in kinds:
        return st.booleans()
    if "object" in kinds:
        return st.dictionaries(st.sampled_from(["buttons", "options", "title", "label"]), JSON, max_size=3)
    if "array" in kinds:
        return st.lists(st.fixed_dictionaries({"name": st.text(min_size=1, max_size=10)}), min_size=1, max_size=4)
    return st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs", "Cc")), min_size=1, max_size=40)


def value_for(schema: dict[str, Any]) -> st.SearchStrategy[Any]:
    """Values of one documented property: mostly what it describes, sometimes anything."""
    return st.one_of(valid_for(schema), valid_for(schema), JSON, st.text(max_size=20))


def bodies_for(schema: dict[str, Any]) -> st.SearchStrategy[dict[str, Any]]:
    """Bodies with the schema's required properties (each one maybe missing) and some optional ones."""
    properties = schema["properties"]
    required = {name: value_for(properties[name]) for name in schema["required"]}
    optional = {name: value_for(prop) for name, prop in properties.items() if name not in schema["required"]}
    return st.fixed_dictionaries(required, optional=optional).flatmap(
        lambda body: st.one_of(st.just(body), st.sampled_from(sorted(body)).map(
            lambda drop: {k: v for k, v in body.items() if k != drop})))


def check(stack: Stack, document: dict[str, Any], response: Any, before: int,
          seen: dict[int, int] | None = None) -> None:
    assert response.status_code < 500, response.text
    if seen is not None:
        seen[response.status_code] = seen.get(response.status_code, 0) + 1
    answer = response.json()
    if response.status_code == 200:
        jsonschema.validate(answer, document["components"]["schemas"]["SendAnswer"])
        assert stack.all("SELECT 1 FROM messages WHERE zaap_id = %s", (answer["zaapId"],)), "accepted, not stored"
    else:
        assert 400 <= response.status_code < 500 and answer["error"] and answer["field"], answer
        assert stack.one("SELECT count(*) AS n FROM messages")["n"] == before, "refused, yet stored"


def test_send_routes_never_fail_and_store_only_what_they_accept(stack: Stack) -> None:
    document = stack.http.get("/openapi.json").json()
    instance = stack.create_instance()
    base = stack.base(instance)
    accepted: dict[str, dict[int, int]] = {}
    for message_type in TYPES.values():
        route = message_type.route.replace("{extension}", "pdf")
        path = f"/instances/{{instance}}/token/{{token}}/{message_type.route}"
        schema = document["paths"][path]["post"]["requestBody"]["content"]["application/json"]["schema"]
        bodies = bodies_for(schema) | st.dictionaries(st.sampled_from(list(schema["properties"])), JSON)

        @FUZZ
        @given(body=bodies, key=st.none() | HEADER_TEXT)
        def post(route: str, body: dict[str, Any], key: str | None) -> None:
            before = stack.one("SELECT count(*) AS n FROM messages")["n"]
            headers = {} if key is None else {"Idempotency-Key": key.encode("latin-1")}
            # Python's JSON writes NaN and Infinity, which JSON has not, but a parser may take.
            check(stack, document, stack.http.post(f"{base}/{route}", content=json.dumps(body).encode(),
                                                   headers={"Content-Type": "application/json", **headers}), before,
                  accepted.setdefault(route, {}))

        post(route)
    # The examples reach both sides: sends accepted and sends refused, over the routes.
    assert sum(counts.get(200, 0) for counts in accepted.values()) >= 10, accepted
    assert sum(1 for counts in accepted.values() if counts.get(200)) >= 6, accepted
    assert sum(counts.get(400, 0) for counts in accepted.values()) >= 100, accepted


@FUZZ
@given(raw=st.binary(max_size=300) | JSON.map(lambda v: json.dumps(v).encode()))
def _raw_bodies(stack: Stack, document: dict[str, Any], base: str, raw: bytes) -> None:
    before = stack.one("SELECT count(*) AS n FROM messages")["n"]
    check(stack, document, stack.http.post(f"{base}/send-text", content=raw,
                                           headers={"Content-Type": "application/json"}), before)


def test_raw_bodies_and_query_strings_never_fail(stack: Stack) -> None:
    document = stack.http.get("/openapi.json").json()
    instance = stack.create_instance()
    base = stack.base(instance)
    _raw_bodies(stack, document, base)

    @FUZZ
    @given(params=st.dictionaries(st.sampled_from(["limit", "offset", "page", "pageSize", "status", "force"]),
                                  st.text(max_size=20), max_size=4),
           path=st.sampled_from(["queue", "queue/count", "webhook-deliveries", "queue/stats", "status"]))
    def query(params: dict[str, str], path: str) -> None:
        response = stack.http.get(f"{base}/{path}", params=params)
        assert response.status_code < 500, response.text
        assert response.status_code in (200, 400), response.text

    query()
