"""compose/compose.replica.yaml: the optional streaming read replica (profile "replica") is a
standby cloned from the primary through a slot of its own, the primary accepts its replication
connections, and the processes that run lag-tolerant reads (web: admin API, worker: business
gauges) are pointed at it. The clone step itself is what tests/support/pg_replica.py does
against a real server."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from ._support import COMPOSE_DIR


def major(image: str) -> str:
    """`postgres:16.6-alpine` -> `postgres:16`: a standby runs the primary's major version."""
    name, _, tag = image.partition(":")
    return f"{name}:{tag.split('-')[0].split('.')[0]}"


@pytest.fixture(scope="module")
def override() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((COMPOSE_DIR / "compose.replica.yaml").read_text())
    return loaded


def test_the_replica_is_an_optional_standby_of_postgres(override: dict[str, Any]) -> None:
    base = yaml.safe_load((COMPOSE_DIR / "compose.yaml").read_text())
    replica = override["services"]["postgres-replica"]
    assert replica["profiles"] == ["replica"]
    assert major(replica["image"]) == major(base["services"]["postgres"]["image"])
    assert replica["networks"] == ["backend"] and "ports" not in replica
    assert replica["depends_on"] == {"postgres": {"condition": "service_healthy"}}
    script = replica["command"][0]
    assert "pg_basebackup" in script and "--write-recovery-conf" in script
    assert '--slot="$$REPLICA_SLOT"' in script and "pg_create_physical_replication_slot" in script
    assert script.rstrip().endswith("exec postgres")
    assert replica["environment"]["PGHOST"] == "postgres"
    assert "pg_is_in_recovery" in " ".join(replica["healthcheck"]["test"])
    assert any(v.startswith("pgreplica:") for v in replica["volumes"])
    assert "pgreplica" in override["volumes"]


def test_the_primary_accepts_replication_and_bounds_the_slot(override: dict[str, Any]) -> None:
    primary = override["services"]["postgres"]
    command = " ".join(primary["command"])
    assert "hba_file=/etc/postgresql/pg_hba.conf" in command
    assert "max_slot_wal_keep_size=" in command
    assert "./postgres/pg_hba.conf:/etc/postgresql/pg_hba.conf:ro" in primary["volumes"]
    rules = [
        line.split()
        for line in (COMPOSE_DIR / "postgres" / "pg_hba.conf").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert ["host", "replication", "all", "all", "scram-sha-256"] in rules
    assert ["host", "all", "all", "all", "scram-sha-256"] in rules  # the app's own connections
    assert not [r for r in rules if r[0] == "host" and r[3] == "all" and r[-1] == "trust"]


def test_web_and_worker_read_on_the_replica(override: dict[str, Any]) -> None:
    for name in ("web", "worker"):
        assert override["services"][name]["environment"]["DB_REPLICA_HOST"] == "postgres-replica"
    assert "ml" not in override["services"]  # ml never touches PostgreSQL
