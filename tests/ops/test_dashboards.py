"""compose/grafana/dashboards: the four dashboards are valid Grafana JSON for the provisioned
Prometheus datasource, every panel queries something, and every query is valid PromQL
(promtool parses them as recording rules)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from ..deploy._support import require_tool
from ._promql import (
    DASHBOARDS_DIR,
    DATASOURCES_FILE,
    all_panels,
    dashboard_exprs,
    dashboards,
    grafana_vars,
    references,
    without_grafana_vars,
)

# dashboard file -> uid and the metrics its panels must show (issue 5, point 8)
EXPECTED = {
    "aiconv-application.json": (
        "aiconv-application",
        {
            "aiconv_http_requests_total",
            "aiconv_http_request_duration_seconds_bucket",
            "aiconv_updates_received_total",
        },
    ),
    "aiconv-pipeline.json": (
        "aiconv-pipeline",
        {
            "aiconv_stream_length",
            "aiconv_stream_lag",
            "aiconv_stream_pending",
            "aiconv_stream_oldest_pending_age_seconds",
            "aiconv_jobs_total",
            "aiconv_job_duration_seconds_bucket",
            "aiconv_dlq_size",
            "aiconv_telegram_api_calls_total",
            "aiconv_telegram_rate_limited_total",
        },
    ),
    "aiconv-model.json": (
        "aiconv-model",
        {
            "aiconv_generation_tokens_per_second_bucket",
            "aiconv_time_to_first_token_seconds_bucket",
            "aiconv_generation_duration_seconds_bucket",
            "aiconv_tokens_total",
            "aiconv_generations_total",
            "aiconv_model_loaded",
        },
    ),
    "aiconv-business.json": (
        "aiconv-business",
        {
            "aiconv_active_users",
            "aiconv_conversations",
            "aiconv_stored_messages",
            "aiconv_replies_total",
            "aiconv_typing_simulation_seconds_bucket",
            "aiconv_reply_latency_seconds_bucket",
            "aiconv_messages_sent_total",
        },
    ),
}

# Grafana's own variables.
BUILTIN_VARS = {
    "__rate_interval",
    "__interval",
    "__interval_ms",
    "__range",
    "__range_s",
    "__range_ms",
    "__dashboard",
    "__from",
    "__to",
}
# Oldest schema we write for: Grafana 10.0 (compose runs 11.x).
MIN_SCHEMA_VERSION = 38
NO_QUERY_PANELS = {"row", "text", "dashlist", "news"}

BOARDS = dashboards()


def provisioned_datasource() -> dict[str, Any]:
    [ds] = yaml.safe_load(DATASOURCES_FILE.read_text())["datasources"]
    return dict(ds)


def datasource_refs(node: Any) -> list[Any]:
    """Every `datasource` value anywhere in the dashboard."""
    found = []
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "datasource":
                found.append(value)
            found += datasource_refs(value)
    elif isinstance(node, list):
        for item in node:
            found += datasource_refs(item)
    return found


def test_the_four_dashboards_are_there() -> None:
    assert set(BOARDS) == set(EXPECTED), f"dashboards in {DASHBOARDS_DIR}: {sorted(BOARDS)}"
    uids = [board["uid"] for board in BOARDS.values()]
    assert len(set(uids)) == len(uids)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_dashboard_structure(name: str) -> None:
    board = BOARDS[name]
    uid, _ = EXPECTED[name]
    assert board["uid"] == uid
    assert board.get("id") is None, "provisioned dashboards carry no numeric id"
    assert board["title"].startswith("aiconv / ")
    assert "aiconv" in board.get("tags", [])
    assert board["schemaVersion"] >= MIN_SCHEMA_VERSION
    panels = list(all_panels(board["panels"]))
    assert panels
    ids = [panel["id"] for panel in panels]
    assert len(ids) == len(set(ids)), f"{name}: duplicate panel ids"
    for panel in panels:
        title = f"{name}: panel {panel['id']} {panel.get('title')!r}"
        assert panel.get("title"), f"{title} has no title"
        pos = panel["gridPos"]
        assert pos["w"] > 0 and pos["h"] > 0 and pos["x"] + pos["w"] <= 24, title
        if panel["type"] in NO_QUERY_PANELS:
            continue
        targets = panel.get("targets", [])
        assert any(t.get("expr", "").strip() for t in targets), f"{title} has no query"
        ref_ids = [t["refId"] for t in targets]
        assert len(ref_ids) == len(set(ref_ids)), f"{title}: duplicate refIds"


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_dashboard_uses_the_provisioned_datasource(name: str) -> None:
    ds = provisioned_datasource()
    for ref in datasource_refs(BOARDS[name]):
        if isinstance(ref, dict) and ref.get("type") == "grafana":
            continue  # Grafana's built-in annotations
        assert isinstance(ref, dict), f"{name}: datasource by name ({ref!r}); use the uid"
        assert ref == {"type": ds["type"], "uid": ds["uid"]}, f"{name}: {ref}"


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_dashboard_shows_its_metrics(name: str) -> None:
    _, wanted = EXPECTED[name]
    used: set[str] = set()
    for _, expr in dashboard_exprs(BOARDS[name]):
        used |= references(expr).metrics
    assert not wanted - used, f"{name} does not show {sorted(wanted - used)}"


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_dashboard_variables_are_defined(name: str) -> None:
    board = BOARDS[name]
    defined = {var["name"] for var in board.get("templating", {}).get("list", [])}
    for where, expr in dashboard_exprs(board):
        undefined = grafana_vars(expr) - defined - BUILTIN_VARS
        assert not undefined, f"{name} {where}: undefined variables {sorted(undefined)}"


def test_every_dashboard_query_is_valid_promql(tmp_path: Path) -> None:
    promtool = require_tool("promtool")
    rules: list[dict[str, str]] = []
    where_of: dict[str, str] = {}
    for name, board in sorted(BOARDS.items()):
        for where, expr in dashboard_exprs(board):
            record = f"dashboard:expr_{len(rules)}"
            where_of[record] = f"{name} {where}"
            rules.append({"record": record, "expr": without_grafana_vars(expr)})
    path = tmp_path / "dashboard-queries.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboards", "rules": rules}]}))
    result = subprocess.run(
        [promtool, "check", "rules", str(path)], capture_output=True, text=True, timeout=120
    )
    output = result.stdout + result.stderr
    for record in re.findall(r"dashboard:expr_\d+", output):
        output = output.replace(record, f"{record} ({where_of[record]})")
    assert result.returncode == 0, output
