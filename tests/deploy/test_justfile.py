"""The Justfile parses (`just --summary`) and has every recipe the operations guide uses."""

from __future__ import annotations

import subprocess

from ._support import ROOT, require_tool

RECIPES = {
    "setup",
    "demo",
    "run",
    "test",
    "lint",
    "bench",
    "load",
    "build",
    "build-cuda",
    "up",
    "up-gpu",
    "down",
    "logs",
    "ps",
    "scale",
    "migrate",
    "backup",
    "restore",
    "deploy",
    "status",
    "rollout-undo",
    "k8s-backup",
    "sync-rules",
    "sync-keda",
    "failover",
    "deploy-tools",
}


def test_justfile_parses_and_has_the_ops_recipes() -> None:
    just = require_tool("just")
    result = subprocess.run(
        [just, "--justfile", str(ROOT / "Justfile"), "--summary"],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr
    assert set(result.stdout.split()) >= RECIPES


def test_deploy_renders_the_overlay_commands() -> None:
    just = require_tool("just")
    result = subprocess.run(
        [just, "--justfile", str(ROOT / "Justfile"), "--dry-run", "deploy", "production"],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr
    assert "kubectl apply -k k8s-kustomize/overlays/production" in result.stderr
