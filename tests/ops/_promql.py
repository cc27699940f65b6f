"""What the dashboards and alert rules refer to: metric names, selector labels and grouping labels
of PromQL expressions, and the metrics aiconv exports (aiconv/observability/metrics.py).

A small lexer, not a PromQL parser: promtool checks the syntax (test_alerts, test_dashboards);
this only has to find every name that must exist in the code.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from prometheus_client import ProcessCollector
from prometheus_client.metrics import MetricWrapperBase

ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS_DIR = ROOT / "compose" / "prometheus"
ALERTS_FILE = PROMETHEUS_DIR / "alerts.yml"
ALERTS_TEST_FILE = PROMETHEUS_DIR / "alerts.test.yml"
DASHBOARDS_DIR = ROOT / "compose" / "grafana" / "dashboards"
DATASOURCES_FILE = ROOT / "compose" / "grafana" / "provisioning" / "datasources" / "prometheus.yml"

# Labels Prometheus attaches to every scraped series. A metric label that collides with one of
# them is stored as exported_<name> (honor_labels: false, the default).
TARGET_LABELS = frozenset({"job", "instance"})

# Series that are not aiconv's own but that the rules may use: Prometheus' scrape health.
# The process_* family comes from prometheus_client's ProcessCollector (see exported_metrics).
EXTERNAL_METRICS: dict[str, frozenset[str]] = {"up": frozenset()}

KEYWORDS = frozenset(
    {
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
        "and",
        "or",
        "unless",
        "bool",
        "offset",
        "inf",
        "nan",
        "atan2",
    }
)

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_GROUPING = re.compile(
    r"\b(by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)", re.IGNORECASE
)
_SELECTOR = re.compile(r"([A-Za-z_:][A-Za-z0-9_:]*)?\s*\{([^{}]*)\}")
_MATCHER = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)\s*(?:=~|!~|!=|=)")
_IDENT = re.compile(r"(?<![\w.$:])([A-Za-z_:][A-Za-z0-9_:]*)(?![\w:])(\s*\()?")
_GRAFANA_VAR = re.compile(r"\$(?:\{[^}]*\}|\w+)")


@dataclass
class Refs:
    """What one expression refers to."""

    metrics: set[str] = field(default_factory=set)
    # (metric, label) for every matcher in a selector
    selector_labels: set[tuple[str, str]] = field(default_factory=set)
    # labels named in by/without/on/ignoring/group_left/group_right
    grouping_labels: set[str] = field(default_factory=set)
    # labels that label_replace/label_join create
    created_labels: set[str] = field(default_factory=set)


def references(expr: str) -> Refs:
    refs = Refs()
    strings: list[str] = []

    def stash(match: re.Match[str]) -> str:
        strings.append(match.group(0))
        return f" __STR{len(strings) - 1}__ "

    # label_replace(v, "dst", "replacement", "src", "regex") and label_join(v, "dst", ...):
    # the destination label exists afterwards.
    for match in re.finditer(r"\blabel_(?:replace|join)\s*\(.*?,\s*\"([^\"]+)\"", expr, re.S):
        refs.created_labels.add(match.group(1))
    text = _STRING.sub(stash, expr)
    text = _GRAFANA_VAR.sub(" ", text)
    for match in _SELECTOR.finditer(text):
        name, body = match.group(1), match.group(2)
        labels = set(_MATCHER.findall(body))
        if name and name.lower() not in KEYWORDS:
            refs.metrics.add(name)
            refs.selector_labels.update((name, label) for label in labels - {"__name__"})
    text = _SELECTOR.sub(lambda m: f" {m.group(1) or ''} ", text)
    text = re.sub(r"\[[^\]]*\]", " ", text)  # ranges and subqueries
    for match in _GROUPING.finditer(text):
        refs.grouping_labels.update(
            label.strip() for label in match.group(2).split(",") if label.strip()
        )
    text = _GROUPING.sub(" ", text)
    for match in _IDENT.finditer(text):
        name, call = match.group(1), match.group(2)
        if call or name.lower() in KEYWORDS or re.fullmatch(r"__STR\d+__", name):
            continue
        refs.metrics.add(name)
    return refs


@dataclass(frozen=True)
class Exported:
    """A sample name aiconv exports and the labels its series carry once scraped."""

    name: str
    labels: frozenset[str]


def exported_metrics() -> dict[str, Exported]:
    """Every sample name aiconv's code exports, from the metric objects of
    aiconv/observability/metrics.py, plus the process collector's and Prometheus' own."""
    from aiconv.observability import metrics

    found: dict[str, Exported] = {}

    def add(name: str, labels: frozenset[str]) -> None:
        stored = {f"exported_{label}" if label in TARGET_LABELS else label for label in labels}
        found[name] = Exported(name, frozenset(stored) | TARGET_LABELS)

    for obj in vars(metrics).values():
        if not isinstance(obj, MetricWrapperBase):
            continue
        [family] = obj.describe()
        labels = frozenset(getattr(obj, "_labelnames", ()))
        base = family.name
        kind = family.type
        if kind == "counter":
            add(f"{base}_total", labels)
            add(f"{base}_created", labels)
        elif kind == "histogram":
            add(f"{base}_bucket", labels | {"le"})
            add(f"{base}_sum", labels)
            add(f"{base}_count", labels)
            add(f"{base}_created", labels)
        elif kind == "summary":
            add(base, labels | {"quantile"})
            add(f"{base}_sum", labels)
            add(f"{base}_count", labels)
            add(f"{base}_created", labels)
        elif kind == "info":
            add(f"{base}_info", labels)
        else:  # gauge, enum (stateset), unknown
            add(base, labels)
    # Every aiconv process serves prometheus_client's default registry (ProcessCollector).
    for family in ProcessCollector(registry=None).collect():
        for sample in family.samples:
            add(sample.name, frozenset())
    for name, labels in EXTERNAL_METRICS.items():
        add(name, labels)
    return found


def recorded_metrics() -> dict[str, frozenset[str]]:
    """Recording rules of alerts.yml: name -> the labels their series carry."""
    found: dict[str, set[str]] = {}
    for rule in rules():
        if "record" in rule:
            labels = found.setdefault(rule["record"], set())
            labels.update(rule.get("labels", {}))
            labels.update(references(rule["expr"]).grouping_labels)
    return {name: frozenset(labels) for name, labels in found.items()}


def alert_groups() -> list[dict[str, Any]]:
    return list(yaml.safe_load(ALERTS_FILE.read_text())["groups"])


def rules() -> Iterator[dict[str, Any]]:
    for group in alert_groups():
        yield from group["rules"]


def dashboards() -> dict[str, dict[str, Any]]:
    return {
        path.name: json.loads(path.read_text()) for path in sorted(DASHBOARDS_DIR.glob("*.json"))
    }


def all_panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """Every panel, including those inside collapsed rows."""
    for panel in panels:
        yield panel
        yield from all_panels(panel.get("panels", []))


def dashboard_exprs(board: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """(where, expr) for every PromQL expression of a dashboard: panel targets, template
    variable queries (label_values(metric, label) and query_result(expr)), annotations."""
    for panel in all_panels(board.get("panels", [])):
        for target in panel.get("targets", []):
            if target.get("expr"):
                yield (
                    f"panel {panel['id']} {panel.get('title')!r} {target['refId']}",
                    target["expr"],
                )
    for var in board.get("templating", {}).get("list", []):
        if var.get("type") != "query":
            continue
        query = var.get("query")
        text = query.get("query", "") if isinstance(query, dict) else str(query or "")
        inner = re.fullmatch(r"\s*(?:label_values|query_result)\((.*)\)\s*", text, re.S)
        if inner is None:
            continue
        body = inner.group(1)
        if text.strip().startswith("label_values"):
            body = body.rsplit(",", 1)[0] if "," in body else ""
        if body.strip():
            yield f"variable ${var['name']}", body
    for annotation in board.get("annotations", {}).get("list", []):
        if annotation.get("expr"):
            yield f"annotation {annotation.get('name')!r}", annotation["expr"]


def grafana_vars(expr: str) -> set[str]:
    return {m.strip("${}").split(":")[0] for m in _GRAFANA_VAR.findall(expr)}


def without_grafana_vars(expr: str) -> str:
    """The expression Prometheus would get: interval variables become durations, template
    variables plain values (inside regex matchers)."""
    expr = re.sub(r"\$(?:__rate_interval|__interval|__range)\b", "5m", expr)
    expr = re.sub(r"\$\{__(?:rate_interval|interval|range)\}", "5m", expr)
    return _GRAFANA_VAR.sub("x", expr)
