"""Every metric a dashboard or an alert rule uses exists in the code (issue 5, point 8).

The names come from the metric objects of aiconv/observability/metrics.py (a counter `x_total`
exports x_total and x_created, a histogram x_bucket, x_sum, x_count and x_created), from
prometheus_client's process collector (process_*), Prometheus' own `up`, and the recording rules
of alerts.yml. Label matchers and grouping labels are checked against the metrics' labels too.
"""

from __future__ import annotations

import pytest

from ._promql import (
    ALERTS_FILE,
    DASHBOARDS_DIR,
    TARGET_LABELS,
    dashboard_exprs,
    dashboards,
    exported_metrics,
    recorded_metrics,
    references,
    rules,
)


def known_labels() -> dict[str, frozenset[str]]:
    labels = {name: m.labels for name, m in exported_metrics().items()}
    labels.update({name: ls | TARGET_LABELS for name, ls in recorded_metrics().items()})
    return labels


def all_exprs() -> list[tuple[str, str]]:
    found = [
        (f"{ALERTS_FILE.name}: {rule.get('alert') or rule.get('record')}", rule["expr"])
        for rule in rules()
    ]
    for name, board in dashboards().items():
        found += [(f"{name}: {where}", expr) for where, expr in dashboard_exprs(board)]
    return found


def problems(where: str, expr: str, labels: dict[str, frozenset[str]]) -> list[str]:
    refs = references(expr)
    found = []
    for metric in sorted(refs.metrics - set(labels)):
        found.append(f"{where}: metric {metric} is not exported by aiconv")
    for metric, label in sorted(refs.selector_labels):
        if metric in labels and label not in labels[metric]:
            found.append(f"{where}: {metric} has no label {label!r} ({sorted(labels[metric])})")
    if refs.metrics - set(labels):
        return found  # the labels of an unknown metric are unknown too
    available = set(refs.created_labels) | TARGET_LABELS
    for metric in refs.metrics:
        available |= labels[metric]
    for label in sorted(refs.grouping_labels - available):
        found.append(f"{where}: no metric of the expression has the label {label!r}")
    return found


def test_the_lexer_finds_names_labels_and_groupings() -> None:
    refs = references(
        "histogram_quantile(0.95, sum by (route, le) (rate(aiconv_http_request_duration_seconds"
        '_bucket{route!="/v1", job=~"$job"}[$__rate_interval]))) > 1 and on (job) '
        "aiconv:memory_limit_bytes * 1e3 offset 5m unless absent(up == 1)"
    )
    assert refs.metrics == {
        "aiconv_http_request_duration_seconds_bucket",
        "aiconv:memory_limit_bytes",
        "up",
    }
    assert refs.selector_labels == {
        ("aiconv_http_request_duration_seconds_bucket", "route"),
        ("aiconv_http_request_duration_seconds_bucket", "job"),
    }
    assert refs.grouping_labels == {"route", "le", "job"}
    assert references('label_replace(vector(1), "dst", "x", "", "")').created_labels == {"dst"}


def test_the_catalogue_derives_sample_names_from_metrics_py() -> None:
    exported = exported_metrics()
    # a counter, a histogram, a gauge, the process collector, Prometheus' up
    for name in (
        "aiconv_http_requests_total",
        "aiconv_http_request_duration_seconds_bucket",
        "aiconv_http_request_duration_seconds_sum",
        "aiconv_http_request_duration_seconds_count",
        "aiconv_dlq_size",
        "process_resident_memory_bytes",
        "process_start_time_seconds",
        "process_cpu_seconds_total",
        "up",
    ):
        assert name in exported, name
    assert "aiconv_http_requests" not in exported
    assert "aiconv_dlq_size_total" not in exported
    assert exported["aiconv_http_request_duration_seconds_bucket"].labels >= {"route", "le"}
    assert "task" in exported["aiconv_scheduled_runs_total"].labels


@pytest.mark.parametrize("where, expr", [pytest.param(w, e, id=w) for w, e in all_exprs()])
def test_every_metric_and_label_used_exists(where: str, expr: str) -> None:
    found = problems(where, expr, known_labels())
    assert not found, "\n".join(found) + (
        "\n(metrics are defined in aiconv/observability/metrics.py)"
    )


def test_every_aiconv_metric_is_on_a_dashboard() -> None:
    used: set[str] = set()
    for board in dashboards().values():
        for _, expr in dashboard_exprs(board):
            used |= references(expr).metrics
    families = {
        name.removesuffix(suffix)
        for name in used
        for suffix in ("_bucket", "_sum", "_count", "_total", "")
        if name.endswith(suffix)
    }
    exported = {
        name
        for name in exported_metrics()
        if name.startswith("aiconv_") and not name.endswith("_created")
    }
    unseen = sorted(
        name
        for name in exported
        if name not in used and not any(name.startswith(f"{f}_") for f in families if f)
    )
    assert not unseen, f"aiconv metrics on no dashboard in {DASHBOARDS_DIR}: {unseen}"
