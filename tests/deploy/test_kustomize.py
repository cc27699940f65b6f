"""k8s-kustomize: every overlay builds with `kubectl kustomize`, every built object validates
against the Kubernetes OpenAPI schemas (kubernetes-validate, strict), and the manifests keep the
promises of the design: namespace, labels, probes, restricted pod security, the production
guide's resources and replicas, GPU scheduling, KEDA scaling, alert rules equal to compose's.
"""

from __future__ import annotations

import base64
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

from aiconv.config import Settings
from aiconv.jobs.keys import Keys

from . import sync_keda, sync_rules
from ._support import KUSTOMIZE_DIR, require_module, require_tool

# Schema-validated against this Kubernetes version (the production guide asks kubectl >= 1.28).
KUBERNETES_VERSIONS = ("1.28.0", "1.37.0")

# Custom resources: no schema in kubernetes-validate, so skipped there on purpose (their CRDs
# belong to operators that are not installed here). The structural checks below cover them.
CUSTOM_RESOURCES = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"),
    ("monitoring.coreos.com/v1", "PrometheusRule"),
    ("keda.sh/v1alpha1", "ScaledObject"),
    ("postgresql.cnpg.io/v1", "Cluster"),
}

OVERLAYS = ("dev", "production", "gpu")
# (name, overlay, components applied on top)
BUILDS = [(o, o, ()) for o in OVERLAYS] + [
    ("production+keda", "production", ("keda",)),
    ("dev+keda", "dev", ("keda",)),
    ("production+telegram", "production", ("telegram-webhook-sources",)),
    ("production+redis-cluster", "production", ("redis-cluster",)),
    ("production+keda+redis-cluster", "production", ("keda", "redis-cluster")),
]

CLUSTER_SCOPED = {"Namespace"}
COMPONENTS = {"web", "worker", "ml"}

GUIDE_RESOURCES = {
    "web": {
        "requests": {"cpu": "1000m", "memory": "2Gi"},
        "limits": {"cpu": "2000m", "memory": "4Gi"},
    },
    "worker": {
        "requests": {"cpu": "500m", "memory": "1Gi"},
        "limits": {"cpu": "1000m", "memory": "2Gi"},
    },
    "ml": {
        "requests": {"cpu": "2000m", "memory": "3Gi"},
        "limits": {"cpu": "3000m", "memory": "6Gi"},
    },
}

Doc = dict[str, Any]


@cache
def kustomize_copy(tmp: str) -> Path:
    """A copy of k8s-kustomize with the dev secrets generated as an operator would."""
    copy = Path(tmp) / "k8s-kustomize"
    shutil.copytree(KUSTOMIZE_DIR, copy, ignore=shutil.ignore_patterns("secrets.env"))
    script = copy / "overlays" / "dev" / "make-secrets.sh"
    subprocess.run([str(script)], check=True, capture_output=True, timeout=30)
    return copy


@cache
def build(overlay: str, components: tuple[str, ...], tmp: str) -> tuple[Doc, ...]:
    kubectl = require_tool("kubectl")
    kustomize_dir = kustomize_copy(tmp)
    target = kustomize_dir / "overlays" / overlay
    if components:
        # A throwaway kustomization that adds the components to the overlay (paths must be
        # relative: kustomize refuses absolute roots).
        wrapper = Path(tmp) / f"{overlay}-{'-'.join(components)}"
        wrapper.mkdir(parents=True, exist_ok=True)
        rel = os.path.relpath(kustomize_dir, wrapper)
        lines = [
            "apiVersion: kustomize.config.k8s.io/v1beta1",
            "kind: Kustomization",
            "resources:",
            f"  - {rel}/overlays/{overlay}",
            "components:",
        ]
        lines += [f"  - {rel}/components/{c}" for c in components]
        (wrapper / "kustomization.yaml").write_text("\n".join(lines) + "\n")
        target = wrapper
    result = subprocess.run(
        [kubectl, "kustomize", str(target)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, f"kubectl kustomize {target}:\n{result.stderr}"
    docs = tuple(d for d in yaml.safe_load_all(result.stdout) if d)
    assert docs, f"{target} built nothing"
    return docs


@pytest.fixture(scope="module")
def tmpdir_str(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(tmp_path_factory.mktemp("kustomize"))


def built(name: str, tmp: str) -> tuple[Doc, ...]:
    [(overlay, components)] = [(o, c) for n, o, c in BUILDS if n == name]
    return build(overlay, components, tmp)


def of_kind(docs: tuple[Doc, ...], kind: str) -> list[Doc]:
    return [d for d in docs if d["kind"] == kind]


def one(docs: tuple[Doc, ...], kind: str, name: str) -> Doc:
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind}/{name}, found {len(found)}"
    return found[0]


def pod_specs(docs: tuple[Doc, ...]) -> Iterator[tuple[str, Doc]]:
    for d in docs:
        kind = d["kind"]
        if kind in {"Deployment", "StatefulSet", "DaemonSet", "Job"}:
            yield f"{kind}/{d['metadata']['name']}", d["spec"]["template"]["spec"]
        elif kind == "CronJob":
            yield (
                f"{kind}/{d['metadata']['name']}",
                d["spec"]["jobTemplate"]["spec"]["template"]["spec"],
            )


def aiconv_deployments(docs: tuple[Doc, ...]) -> dict[str, Doc]:
    return {
        d["metadata"]["labels"]["app.kubernetes.io/component"]: d
        for d in of_kind(docs, "Deployment")
        if d["metadata"]["labels"].get("app.kubernetes.io/name") == "aiconv"
    }


def main_container(deployment: Doc) -> Doc:
    containers: list[Doc] = deployment["spec"]["template"]["spec"]["containers"]
    [c] = [c for c in containers if c["name"] == "aiconv"]
    return c


# --- build + schema -------------------------------------------------------------------------


@pytest.mark.parametrize("name", [b[0] for b in BUILDS])
def test_builds_and_validates_against_kubernetes_schemas(name: str, tmpdir_str: str) -> None:
    require_module("kubernetes_validate", "kubernetes-validate")
    import kubernetes_validate

    docs = built(name, tmpdir_str)
    skipped = set()
    for doc in docs:
        key = (doc["apiVersion"], doc["kind"])
        if key in CUSTOM_RESOURCES:
            skipped.add(key)
            continue
        for version in KUBERNETES_VERSIONS:
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except kubernetes_validate.ValidationError as e:
                pytest.fail(
                    f"{name}: {doc['kind']}/{doc['metadata']['name']} invalid for "
                    f"Kubernetes {version}: {e.message} at {list(e.path)}"
                )
            except kubernetes_validate.SchemaNotFoundError:
                pytest.fail(
                    f"{name}: no schema for {key} — a custom resource? list it in CUSTOM_RESOURCES"
                )
    # every custom resource kind the overlays use is accounted for
    assert {
        ("monitoring.coreos.com/v1", "ServiceMonitor"),
        ("monitoring.coreos.com/v1", "PrometheusRule"),
    } <= skipped


@pytest.mark.parametrize("name", [b[0] for b in BUILDS])
def test_every_object_is_in_the_aiconv_namespace(name: str, tmpdir_str: str) -> None:
    docs = built(name, tmpdir_str)
    for doc in docs:
        if doc["kind"] in CLUSTER_SCOPED:
            continue
        assert doc["metadata"].get("namespace") == "aiconv", (
            f"{doc['kind']}/{doc['metadata']['name']}"
        )
    [ns] = of_kind(docs, "Namespace")
    assert ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"


@pytest.mark.parametrize("name", [b[0] for b in BUILDS])
def test_every_pod_meets_restricted_pod_security(name: str, tmpdir_str: str) -> None:
    for where, spec in pod_specs(built(name, tmpdir_str)):
        pod_sc = spec.get("securityContext", {})
        assert pod_sc.get("runAsNonRoot") is True, where
        assert pod_sc.get("seccompProfile", {}).get("type") == "RuntimeDefault", where
        assert not spec.get("hostNetwork") and not spec.get("hostPID"), where
        for c in spec.get("initContainers", []) + spec["containers"]:
            sc = c.get("securityContext", {})
            what = f"{where} container {c['name']}"
            assert sc.get("allowPrivilegeEscalation") is False, what
            assert sc.get("readOnlyRootFilesystem") is True, what
            assert sc.get("capabilities", {}).get("drop") == ["ALL"], what
            assert not sc.get("privileged"), what
            assert "resources" in c and c["resources"].get("limits"), f"{what}: no limits"
        for v in spec.get("volumes", []):
            assert "hostPath" not in v, where


@pytest.mark.parametrize("name", [b[0] for b in BUILDS])
def test_deployments_labels_modes_and_probes(name: str, tmpdir_str: str) -> None:
    docs = built(name, tmpdir_str)
    deployments = aiconv_deployments(docs)
    assert set(deployments) == COMPONENTS
    for component, d in deployments.items():
        labels = {"app.kubernetes.io/name": "aiconv", "app.kubernetes.io/component": component}
        assert d["metadata"]["name"] == f"aiconv-{component}"
        assert d["spec"]["selector"]["matchLabels"] == labels
        assert labels.items() <= d["spec"]["template"]["metadata"]["labels"].items()
        c = main_container(d)
        assert c["args"] == [component]
        ports = {p["name"]: p["containerPort"] for p in c["ports"]}
        assert ports["metrics"] == 8001
        if component == "web":
            assert ports["http"] == 8000
        assert c["livenessProbe"]["httpGet"] == {"path": "/health", "port": "metrics"}
        assert c["readinessProbe"]["httpGet"] == {"path": "/ready", "port": "metrics"}
        assert c["startupProbe"]["httpGet"]["port"] == "metrics"
        [migrate] = d["spec"]["template"]["spec"]["initContainers"]
        assert migrate["args"] == ["migrate"]


@pytest.mark.parametrize("name", [b[0] for b in BUILDS])
def test_references_resolve(name: str, tmpdir_str: str) -> None:
    """ConfigMaps referenced exist (hashed names); Secrets exist or are made outside the repo."""
    docs = built(name, tmpdir_str)
    configmaps = {d["metadata"]["name"] for d in of_kind(docs, "ConfigMap")}
    secrets = {d["metadata"]["name"] for d in of_kind(docs, "Secret")}
    external = {"aiconv-secrets", "aiconv-redis", "aiconv-db-app", "aiconv-tls"}
    text = yaml.safe_dump_all(docs)
    for where, spec in pod_specs(docs):
        for c in spec.get("initContainers", []) + spec["containers"]:
            refs = [e.get("configMapRef", e.get("secretRef")) for e in c.get("envFrom", [])]
            refs += [
                e["valueFrom"].get("configMapKeyRef") or e["valueFrom"].get("secretKeyRef")
                for e in c.get("env", [])
                if "valueFrom" in e and "resourceFieldRef" not in e["valueFrom"]
            ]
            for ref in refs:
                assert ref["name"] in configmaps | secrets | external, f"{where}: {ref}"
        for v in spec.get("volumes", []):
            if "persistentVolumeClaim" in v:
                claim = v["persistentVolumeClaim"]["claimName"]
                assert f"name: {claim}" in text, f"{where}: PVC {claim}"
    services = of_kind(docs, "Service")
    templates = [
        d["spec"]["template"]["metadata"]["labels"]
        for d in docs
        if d["kind"] in {"Deployment", "StatefulSet"}
    ]
    for s in services:
        assert any(s["spec"]["selector"].items() <= t.items() for t in templates), s["metadata"]
    if name.startswith("production") or name == "gpu":
        assert "aiconv-secrets" not in secrets, "production must not ship placeholder secrets"
        assert "change-me" not in text


def test_production_follows_the_guide(tmpdir_str: str) -> None:
    docs = built("production", tmpdir_str)
    deployments = aiconv_deployments(docs)
    for component, expected in GUIDE_RESOURCES.items():
        assert main_container(deployments[component])["resources"] == expected, component
    hpa = one(docs, "HorizontalPodAutoscaler", "aiconv-web")["spec"]
    assert (hpa["minReplicas"], hpa["maxReplicas"]) == (3, 10)
    targets = {
        m["resource"]["name"]: m["resource"]["target"]["averageUtilization"] for m in hpa["metrics"]
    }
    assert targets == {"cpu": 70, "memory": 80}
    assert deployments["web"]["spec"]["replicas"] == 3
    for component in COMPONENTS:
        pdb = one(docs, "PodDisruptionBudget", f"aiconv-{component}")
        assert pdb["spec"]["selector"]["matchLabels"]["app.kubernetes.io/component"] == component
    cluster = one(docs, "Cluster", "aiconv-db")
    assert cluster["spec"]["instances"] >= 2
    config = of_kind(docs, "ConfigMap")[0]["data"]
    assert config["ENVIRONMENT"] == "production"
    assert config["DB_HOST"] == "aiconv-db-rw"
    env = {e["name"]: e for e in main_container(deployments["worker"])["env"]}
    assert env["DB_PASSWORD"]["valueFrom"]["secretKeyRef"]["name"] == "aiconv-db-app"
    assert env["REDIS_HOST"]["valueFrom"]["secretKeyRef"]["name"] == "aiconv-redis"
    paths = set()
    for name in ("aiconv", "aiconv-api"):
        ingress = one(docs, "Ingress", name)["spec"]
        assert ingress["tls"][0]["secretName"] == "aiconv-tls"
        paths |= {p["path"] for p in ingress["rules"][0]["http"]["paths"]}
    assert paths == {"/webhook", "/v1", "/health"}
    kinds = {d["kind"] for d in docs}
    assert {
        "NetworkPolicy",
        "ServiceMonitor",
        "PrometheusRule",
        "CronJob",
        "PersistentVolumeClaim",
    } <= kinds
    deny = one(docs, "NetworkPolicy", "default-deny")["spec"]
    assert deny["podSelector"] == {} and set(deny["policyTypes"]) == {"Ingress", "Egress"}
    backup = one(docs, "CronJob", "aiconv-db-backup")
    [pg_dump] = backup["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"]
    assert "pg_dump" in pg_dump["args"][0]


def test_dev_is_small_and_self_contained(tmpdir_str: str) -> None:
    docs = built("dev", tmpdir_str)
    for d in aiconv_deployments(docs).values():
        assert d["spec"]["replicas"] == 1
    for hpa in of_kind(docs, "HorizontalPodAutoscaler"):
        assert hpa["spec"]["minReplicas"] == 1
    statefulsets = {d["metadata"]["name"] for d in of_kind(docs, "StatefulSet")}
    assert statefulsets == {"postgres", "redis"}
    config = of_kind(docs, "ConfigMap")[0]["data"]
    assert (config["ENVIRONMENT"], config["DB_HOST"], config["REDIS_HOST"]) == (
        "dev",
        "postgres",
        "redis",
    )


def test_gpu_runs_the_cuda_image_on_a_gpu_node(tmpdir_str: str) -> None:
    docs = built("gpu", tmpdir_str)
    ml = aiconv_deployments(docs)["ml"]
    c = main_container(ml)
    assert "aiconv-cuda" in c["image"]
    assert c["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert c["resources"]["requests"]["nvidia.com/gpu"] == 1
    assert {e["name"]: e.get("value") for e in c["env"]}["N_GPU_LAYERS"] == "-1"
    spec = ml["spec"]["template"]["spec"]
    assert spec["nodeSelector"]
    assert any(t["key"] == "nvidia.com/gpu" for t in spec["tolerations"])
    for component in ("web", "worker"):
        assert "aiconv-cuda" not in main_container(aiconv_deployments(docs)[component])["image"]


def single_redis_keys(docs: tuple[Doc, ...]) -> Keys:
    """The key layout the build's ConfigMap gives aiconv (as aiconv's own settings read it)."""
    config = of_kind(docs, "ConfigMap")[0]["data"]
    settings = Settings.from_env({k: v for k, v in config.items() if k.startswith("REDIS_")})
    return Keys(settings.redis_key_prefix, settings.redis_shards)


@pytest.mark.parametrize("name", ["production+keda", "dev+keda"])
def test_keda_scales_ml_on_generate_stream_lag(name: str, tmpdir_str: str) -> None:
    docs = built(name, tmpdir_str)
    keys = single_redis_keys(docs)
    assert keys.shards == 1
    so = one(docs, "ScaledObject", "aiconv-ml")["spec"]
    assert so["scaleTargetRef"]["name"] == "aiconv-ml"
    trigger, api_trigger = so["triggers"]
    assert trigger["type"] == api_trigger["type"] == "redis-streams"
    assert (trigger["metadata"]["stream"],) == keys.stage_streams("generate")
    assert api_trigger["metadata"]["stream"] == keys.openai_generate
    assert trigger["metadata"]["consumerGroup"] == api_trigger["metadata"]["consumerGroup"] == "ml"
    ml = aiconv_deployments(docs)["ml"]
    assert "replicas" not in ml["spec"], "KEDA owns the ml replica count"
    names = {e["name"] for e in main_container(ml).get("env", [])}
    config = of_kind(docs, "ConfigMap")[0]["data"]
    for var in ("hostFromEnv", "portFromEnv"):
        assert trigger["metadata"][var] in names | set(config)


@pytest.mark.parametrize("name", ["production+keda", "dev+keda"])
def test_keda_scales_workers_on_what_limits_them(name: str, tmpdir_str: str) -> None:
    """Issue 10: updates and replies lag (and CPU), not CPU alone; one autoscaler per target."""
    docs = built(name, tmpdir_str)
    keys = single_redis_keys(docs)
    so = one(docs, "ScaledObject", "aiconv-worker")["spec"]
    assert so["scaleTargetRef"]["name"] == "aiconv-worker"
    streams = {
        (t["metadata"]["stream"], t["metadata"]["consumerGroup"])
        for t in so["triggers"]
        if t["type"] == "redis-streams"
    }
    assert streams == {(keys.updates(0), "worker"), (keys.replies(0), "delivery")}
    assert any(t["type"] == "cpu" for t in so["triggers"])
    hpa_targets = [
        h["spec"]["scaleTargetRef"]["name"] for h in of_kind(docs, "HorizontalPodAutoscaler")
    ]
    assert "aiconv-worker" not in hpa_targets, "KEDA's HPA and the base's would fight"
    assert "replicas" not in aiconv_deployments(docs)["worker"]["spec"]


# --- issue 12: Redis Cluster -------------------------------------------------------------------


def test_the_cluster_component_turns_the_cluster_on_with_settings_aiconv_accepts(
    tmpdir_str: str,
) -> None:
    for name in ("production+redis-cluster", "production+keda+redis-cluster"):
        docs = built(name, tmpdir_str)
        config = of_kind(docs, "ConfigMap")[0]["data"]
        settings = Settings.from_env({k: v for k, v in config.items() if k.startswith("REDIS_")})
        assert settings.redis_cluster_enabled and settings.redis_cluster_nodes
        # a multiple of 3 primaries (the smallest cluster with failover), and of 2, 4, 6
        assert settings.redis_shards % 12 == 0
    # No ScaledObject appears without the keda component: the trigger patches found none.
    assert of_kind(built("production+redis-cluster", tmpdir_str), "ScaledObject") == []


@pytest.mark.parametrize("target", ["aiconv-ml", "aiconv-worker"])
def test_keda_on_the_cluster_watches_every_shard_stream_keys_makes(
    target: str, tmpdir_str: str
) -> None:
    """The cluster triggers name exactly the streams aiconv reads for the build's REDIS_SHARDS
    and prefix (computed here with aiconv's Keys, so they cannot drift), through the cluster
    scaler, and the formula sums each stream's shards against the single-Redis threshold."""
    docs = built("production+keda+redis-cluster", tmpdir_str)
    config = of_kind(docs, "ConfigMap")[0]["data"]
    settings = Settings.from_env({k: v for k, v in config.items() if k.startswith("REDIS_")})
    keys = Keys(settings.redis_key_prefix, settings.redis_shards)
    so = one(docs, "ScaledObject", target)["spec"]
    lag = [t for t in so["triggers"] if t["type"] != "cpu"]
    assert {t["type"] for t in lag} == {"redis-cluster-streams"}
    streams = {t["metadata"]["stream"]: t["metadata"]["consumerGroup"] for t in lag}
    if target == "aiconv-ml":
        wanted = [*keys.stage_streams("generate"), keys.openai_generate]
    else:
        wanted = [*keys.stage_streams("updates"), *keys.stage_streams("replies")]
        assert any(t["type"] == "cpu" for t in so["triggers"])
    assert sorted(streams) == sorted(wanted)
    assert len(lag) == len(wanted)  # one trigger per stream, none twice
    assert streams == {stream: keys.group_of(stream) for stream in wanted}
    # Every trigger reaches the cluster through the container's own settings.
    for t in lag:
        assert t["metadata"]["addressesFromEnv"] == "REDIS_CLUSTER_NODES"
        assert t["metadata"]["passwordFromEnv"] == "REDIS_PASSWORD"
    # The formula uses every named trigger once, and the HPA's target is one per replica.
    modifiers = so["advanced"]["scalingModifiers"]
    names = re.findall(r"[a-z]+_?[0-9]*", modifiers["formula"])
    assert sorted(n for n in names if n != "max") == sorted(t["name"] for t in lag)
    assert (modifiers["target"], modifiers["metricType"]) == ("1", "AverageValue")
    # the same thresholds as on one Redis
    single = one(built("production+keda", tmpdir_str), "ScaledObject", target)["spec"]
    thresholds = {
        t["metadata"]["lagCount"] for t in single["triggers"] if "lagCount" in t.get("metadata", {})
    }
    assert {t["metadata"]["lagCount"] for t in lag} == thresholds
    assert sync_keda.main(["--check"]) == 0, "run `just sync-keda`"


def test_prometheus_rule_equals_the_compose_alerts(tmpdir_str: str) -> None:
    docs = built("production", tmpdir_str)
    rule = one(docs, "PrometheusRule", "aiconv")
    alerts = yaml.safe_load(sync_rules.ALERTS.read_text())
    assert rule["spec"]["groups"] == alerts["groups"], "run `just sync-rules`"
    assert sync_rules.main(["--check"]) == 0
    monitor = one(docs, "ServiceMonitor", "aiconv")["spec"]
    service_ports = {
        p["name"]
        for s in of_kind(docs, "Service")
        if s["metadata"]["labels"].get("app.kubernetes.io/name") == "aiconv"
        for p in s["spec"]["ports"]
    }
    assert {e["port"] for e in monitor["endpoints"]} <= service_ports


# --- issue 13, item 5: dev publishes nothing and commits no secret -----------------------------


def test_dev_publishes_no_ingress(tmpdir_str: str) -> None:
    for name in ("dev", "dev+keda"):
        assert of_kind(built(name, tmpdir_str), "Ingress") == []


def test_dev_secrets_are_generated_not_committed(tmpdir_str: str, tmp_path: Path) -> None:
    [secret] = of_kind(built("dev", tmpdir_str), "Secret")
    assert secret["metadata"]["name"].startswith("aiconv-secrets")
    values = {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}
    for key in ("TELEGRAM_WEBHOOK_SECRET", "SECRET_KEY", "JWT_SECRET_KEY", "DB_PASSWORD"):
        assert re.fullmatch(r"[0-9a-f]{64}", values[key]), key
    assert len(bytes.fromhex(values["ENCRYPTION_KEY"])) == 32
    # Another run makes other values; an existing file is kept (the database's password).
    script = KUSTOMIZE_DIR / "overlays" / "dev" / "make-secrets.sh"
    other = tmp_path / "make-secrets.sh"
    shutil.copy(script, other)
    subprocess.run([str(other)], check=True, capture_output=True, timeout=30)
    first = (tmp_path / "secrets.env").read_text()
    assert f"JWT_SECRET_KEY={values['JWT_SECRET_KEY']}" not in first
    subprocess.run([str(other)], check=True, capture_output=True, timeout=30)
    assert (tmp_path / "secrets.env").read_text() == first
    # Nothing in the repository holds a value for the Secret.
    tracked = subprocess.run(
        ["git", "ls-files", "k8s-kustomize"],
        capture_output=True,
        text=True,
        check=True,
        cwd=KUSTOMIZE_DIR.parent,
    ).stdout.split()
    assert "k8s-kustomize/overlays/dev/secrets.env" not in tracked
    for path in tracked:
        text = (KUSTOMIZE_DIR.parent / path).read_text()
        assert not re.search(r"[:=] *change-me", text), path
        assert "kind: Secret\n" not in text or "stringData" not in text, path


# --- issue 13, item 11: edge limits, webhook sources, egress, pinned images --------------------

LIMITS = "nginx.ingress.kubernetes.io/limit-"
SOURCES = "nginx.ingress.kubernetes.io/whitelist-source-range"


def telegram_networks() -> list[str]:
    """The networks of nginx/webhook-from-telegram.conf (compose's edge), in order."""
    text = (KUSTOMIZE_DIR.parent / "nginx" / "webhook-from-telegram.conf").read_text()
    return re.findall(r"^allow ([0-9./]+);", text, flags=re.MULTILINE)


def test_the_ingress_limits_v1_per_client_and_leaves_the_webhook_alone(tmpdir_str: str) -> None:
    docs = built("production", tmpdir_str)
    api = one(docs, "Ingress", "aiconv-api")
    annotations = api["metadata"]["annotations"]
    # As compose's nginx: 20 requests/s with a burst of 40, 16 open connections per address.
    assert annotations[f"{LIMITS}rps"] == "20"
    assert annotations[f"{LIMITS}burst-multiplier"] == "2"
    assert annotations[f"{LIMITS}connections"] == "16"
    assert {p["path"] for p in api["spec"]["rules"][0]["http"]["paths"]} == {"/v1", "/health"}
    webhook = one(docs, "Ingress", "aiconv")
    assert [p["path"] for p in webhook["spec"]["rules"][0]["http"]["paths"]] == ["/webhook"]
    assert not [a for a in webhook["metadata"]["annotations"] if a.startswith(LIMITS)]
    assert SOURCES not in webhook["metadata"]["annotations"]  # off by default
    assert webhook["spec"]["rules"][0]["host"] == api["spec"]["rules"][0]["host"]


def test_the_telegram_component_limits_only_the_webhook_to_telegrams_networks(
    tmpdir_str: str,
) -> None:
    docs = built("production+telegram", tmpdir_str)
    webhook = one(docs, "Ingress", "aiconv")["metadata"]["annotations"]
    assert webhook[SOURCES].split(",") == telegram_networks()
    assert telegram_networks() == ["149.154.160.0/20", "91.108.4.0/22"]
    assert SOURCES not in one(docs, "Ingress", "aiconv-api")["metadata"]["annotations"]


def pod_labels(docs: tuple[Doc, ...]) -> list[dict[str, str]]:
    """The labels of every pod template, plus those CloudNativePG gives its instances."""
    labels = [
        spec_owner["spec"]["template"]["metadata"]["labels"]
        for spec_owner in docs
        if spec_owner["kind"] in {"Deployment", "StatefulSet"}
    ]
    labels += [{"cnpg.io/cluster": d["metadata"]["name"]} for d in of_kind(docs, "Cluster")]
    return labels


@pytest.mark.parametrize("name", ["dev", "production"])
def test_egress_to_postgres_and_redis_goes_to_their_pods_only(name: str, tmpdir_str: str) -> None:
    docs = built(name, tmpdir_str)
    reached: dict[int, list[dict[str, str]]] = {5432: [], 6379: []}
    for policy in of_kind(docs, "NetworkPolicy"):
        for rule in policy["spec"].get("egress", []):
            ports = {p.get("port") for p in rule.get("ports", [])}
            for port in ports & set(reached):
                peers = rule.get("to")
                assert peers, f"{policy['metadata']['name']}: port {port} to any address"
                for peer in peers:
                    assert "ipBlock" not in peer, policy["metadata"]["name"]
                    assert peer["podSelector"]["matchLabels"], policy["metadata"]["name"]
                    assert "namespaceSelector" not in peer  # this namespace
                    reached[port].append(peer["podSelector"]["matchLabels"])
    labels = pod_labels(docs)

    def selects(selector: dict[str, str]) -> bool:
        return any(selector.items() <= pod.items() for pod in labels)

    assert reached[5432] and all(selects(s) for s in reached[5432]), reached[5432]
    if name == "dev":  # production's Redis is outside this build (secret aiconv-redis)
        assert reached[6379] and all(selects(s) for s in reached[6379]), reached[6379]
    # and no aiconv pod is selected as a data service
    for selector in reached[5432] + reached[6379]:
        assert selector.get("app.kubernetes.io/name") != "aiconv"


OWN_IMAGES = {"aiconv", "aiconv-cuda", "ghcr.io/aiconv/aiconv", "ghcr.io/aiconv/aiconv-cuda"}
EXACT_TAG = re.compile(r"v?\d+\.\d+(\.\d+)?([-.][a-z0-9.]+)?(@sha256:[0-9a-f]{64})?")


@pytest.mark.parametrize("name", [b[0] for b in BUILDS])
def test_third_party_images_are_pinned_to_exact_versions(name: str, tmpdir_str: str) -> None:
    docs = built(name, tmpdir_str)
    images = [c["image"] for _, spec in containers_of(docs) for c in spec]
    images += [d["spec"]["imageName"] for d in of_kind(docs, "Cluster")]
    assert images
    for image in images:
        repository, _, tag = image.partition(":")
        if repository in OWN_IMAGES:
            continue  # built by this project; the overlays set its version
        assert EXACT_TAG.fullmatch(tag), f"{image}: not an exact version"


def containers_of(docs: tuple[Doc, ...]) -> Iterator[tuple[str, list[Doc]]]:
    for where, spec in pod_specs(docs):
        yield where, [*spec.get("initContainers", []), *spec["containers"]]
