"""The production overlay reads lag-tolerant data on the CloudNativePG replicas: aiconv is given
the read-only service (aiconv-db-ro, the replicas) as DB_REPLICA_HOST, and the Cluster has
replicas behind it; the settings turn that into the replica URL with the app's credentials."""

from __future__ import annotations

import pytest

from aiconv.config import Settings

from .test_kustomize import built, of_kind, one


@pytest.fixture(scope="module")
def tmpdir_str(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(tmp_path_factory.mktemp("kustomize-replica"))


def test_production_reads_on_the_cnpg_read_only_service(tmpdir_str: str) -> None:
    docs = built("production", tmpdir_str)
    cluster = one(docs, "Cluster", "aiconv-db")
    assert cluster["spec"]["instances"] >= 2  # a primary and at least one replica
    config = of_kind(docs, "ConfigMap")[0]["data"]
    assert config["DB_REPLICA_HOST"] == f"{cluster['metadata']['name']}-ro"
    assert "DATABASE_REPLICA_URL" not in config  # built from the credentials, never written out
    database = {k: v for k, v in config.items() if k.startswith("DB_")}
    settings = Settings.from_env({**database, "DB_USER": "app", "DB_PASSWORD": "s3cret/+="})
    assert settings.database_replica_url == (
        f"postgresql://app:s3cret%2F%2B%3D@aiconv-db-ro:{config['DB_PORT']}/{config['DB_NAME']}"
    )
