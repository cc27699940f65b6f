"""Write k8s-kustomize/base/prometheusrule.yaml from compose/prometheus/alerts.yml.

compose/prometheus/alerts.yml is the one source of the alert rules: compose's Prometheus loads
it as is, and Kubernetes gets the same groups inside a PrometheusRule. Run after editing the
rules (`just sync-rules`); tests/deploy/test_kustomize.py fails while the two differ.

    python tests/deploy/sync_rules.py            # rewrite the PrometheusRule
    python tests/deploy/sync_rules.py --check    # exit 1 if it is out of date
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
ALERTS = ROOT / "compose" / "prometheus" / "alerts.yml"
RULE = ROOT / "k8s-kustomize" / "base" / "prometheusrule.yaml"

HEADER = (
    "# GENERATED from compose/prometheus/alerts.yml by `just sync-rules`; do not edit here.\n"
    "# Your Prometheus may select rules by a label (kube-prometheus-stack: release=<name>):\n"
    "# add it in your overlay.\n"
)


class _Dumper(yaml.SafeDumper):
    def ignore_aliases(self, data: Any) -> bool:
        return True


def rendered() -> str:
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    rule = {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {"name": "aiconv", "labels": {"app.kubernetes.io/name": "aiconv"}},
        "spec": {"groups": groups},
    }
    return HEADER + yaml.dump(rule, Dumper=_Dumper, sort_keys=False, width=1000, allow_unicode=True)


def main(argv: list[str]) -> int:
    text = rendered()
    if "--check" in argv:
        if not RULE.exists() or RULE.read_text() != text:
            print(
                f"{RULE.relative_to(ROOT)} is out of date: run `just sync-rules`", file=sys.stderr
            )
            return 1
        return 0
    RULE.write_text(text)
    print(f"wrote {RULE.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
