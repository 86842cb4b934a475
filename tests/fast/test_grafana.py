"""The Grafana board and the Prometheus alert rules (docs/grafana/) kept in step with the code:
both parse, and every metric they query is one the API or a worker declares. No database, no
network: the names come from the two registries and from the database-gauge collector run on a
stub snapshot."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from service.api import metrics as api_metrics
from workers import counters as worker_metrics

GRAFANA = Path(__file__).resolve().parents[2] / "docs" / "grafana"
DASHBOARD = GRAFANA / "wmq-dashboard.json"
ALERTS = GRAFANA / "alerts.yml"
METRIC = re.compile(r"wmq_[a-z_]+")
SUFFIXES = ("_total", "_bucket", "_sum", "_count")


class _Values(dict[str, Any]):
    """What `Snapshot.values()` returns, with every key the collector may read: a number for any
    key not given, so a gauge added to the collector needs no change here."""

    def __missing__(self, key: str) -> Any:
        return 0

    def get(self, key: str, default: Any = None) -> Any:
        return self[key]


class _StubSnapshot:
    def values(self) -> dict[str, Any]:
        return _Values(statuses={"scheduled": 1, "completed": 2}, connected=1, not_connected=1, paused=0,
                       oldest_due_s=0.0, live_workers=1, webhooks_pending=0)


def known_metrics() -> set[str]:
    """Base names (no `_total`, `_bucket`…) of every metric the code declares."""
    names = {family.name for registry in (api_metrics.REGISTRY, worker_metrics.REGISTRY)
             for family in registry.collect()}
    names |= {family.name for family in api_metrics.DatabaseGauges(_StubSnapshot()).collect()}  # type: ignore[arg-type]
    return names


def base_name(name: str) -> str:
    for suffix in SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def all_panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in panels:
        yield panel
        yield from all_panels(panel.get("panels", []))  # a collapsed row holds its panels


def dashboard_exprs() -> list[str]:
    board = json.loads(DASHBOARD.read_text())
    return [target["expr"] for panel in all_panels(board["panels"]) for target in panel.get("targets", [])]


def alert_rules() -> list[dict[str, Any]]:
    """The rules, by PyYAML where installed, else from the file's own layout (one `expr:` line a rule)."""
    text = ALERTS.read_text()
    try:
        import yaml
    except ImportError:
        rules: list[dict[str, Any]] = []
        for line in text.splitlines():
            if match := re.match(r"\s*- alert: (\S+)\s*$", line):
                rules.append({"alert": match[1], "annotations": {}})
            elif rules and (match := re.match(r"\s*(expr|for): (.+?)\s*$", line)):
                rules[-1][match[1]] = match[2]
            elif rules and (match := re.match(r"\s*(summary|description):", line)):
                rules[-1]["annotations"][match[1]] = line
        return rules
    document = yaml.safe_load(text)
    return [rule for group in document["groups"] for rule in group["rules"]]


def test_the_dashboard_parses_with_unique_panels_and_queries() -> None:
    board = json.loads(DASHBOARD.read_text())
    assert board["schemaVersion"] >= 36 and board["uid"] and board["title"]
    variables = {variable["name"]: variable for variable in board["templating"]["list"]}
    assert variables["DS_PROMETHEUS"]["type"] == "datasource"
    assert any(given["name"] == "DS_PROMETHEUS" for given in board["__inputs"])
    panels = list(all_panels(board["panels"]))
    ids = [panel["id"] for panel in panels]
    titles = [panel["title"] for panel in panels]
    assert len(ids) == len(set(ids)), f"panel ids repeated: {sorted({i for i in ids if ids.count(i) > 1})}"
    assert len(titles) == len(set(titles)), f"titles repeated: {sorted({t for t in titles if titles.count(t) > 1})}"
    queried = [panel for panel in panels if panel["type"] != "row"]
    assert len(queried) >= 12
    for panel in queried:
        assert panel["targets"], f"panel {panel['title']!r} has no query"
        for target in panel["targets"]:
            assert target.get("expr", "").strip(), f"panel {panel['title']!r}: a target with no expr"
            assert target["datasource"]["uid"] == "${DS_PROMETHEUS}", panel["title"]


def test_the_alert_rules_parse_and_tell_the_operator_what_to_look_at() -> None:
    rules = alert_rules()
    names = [rule["alert"] for rule in rules]
    assert len(names) == len(set(names))
    assert {"WMQOldestDueMessageTooOld", "WMQInstancesDisconnectedWithBacklog"} <= set(names)
    for rule in rules:
        assert str(rule.get("expr", "")).strip() and "for" in rule, rule["alert"]
        assert {"summary", "description"} <= set(rule["annotations"]), rule["alert"]


@pytest.mark.parametrize("source", ["dashboard", "alerts"])
def test_every_metric_queried_is_declared_by_the_code(source: str) -> None:
    exprs = dashboard_exprs() if source == "dashboard" else [str(rule["expr"]) for rule in alert_rules()]
    assert exprs
    used = {base_name(name) for expr in exprs for name in METRIC.findall(expr)}
    missing = sorted(used - known_metrics())
    assert not missing, f"{source} queries metrics the code does not declare: {', '.join(missing)}"
