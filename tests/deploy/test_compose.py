"""compose/: the services are wired as the design says, every variable is documented in
.env.example, the mounted files exist, Prometheus/Grafana provisioning points at the right
places; `promtool` checks the Prometheus configuration and alert rules. (No Docker engine here:
`docker compose config` runs only where the compose plugin is installed.)"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from ._support import ALERTS_FILE, COMPOSE_DIR, ROOT, require_tool

AICONV_SERVICES = {"migrate": "migrate", "web": "web", "worker": "worker", "ml": "ml"}
LONG_RUNNING = ("web", "worker", "ml")

# The application's environment contract (DESIGN.md, the production guide).
CONTRACT_VARS = [
    "ENVIRONMENT",
    "LOG_LEVEL",
    "LOG_FORMAT",
    "DATABASE_URL",
    "DB_HOST",
    "DB_PORT",
    "DB_NAME",
    "DB_USER",
    "DB_PASSWORD",
    "DB_POOL_SIZE",
    "REDIS_URL",
    "REDIS_HOST",
    "REDIS_PORT",
    "REDIS_PASSWORD",
    "REDIS_DB",
    "REDIS_KEY_PREFIX",
    "REDIS_CLUSTER_ENABLED",
    "REDIS_CLUSTER_NODES",
    "TELEGRAM_BOT_TOKEN",
    "TELEGRAM_WEBHOOK_URL",
    "TELEGRAM_WEBHOOK_SECRET",
    "TELEGRAM_API_URL",
    "SECRET_KEY",
    "JWT_SECRET_KEY",
    "ENCRYPTION_KEY",
    "METRICS_ENABLED",
    "METRICS_PORT",
    "PORT",
    "WEB_WORKERS",
    "SENTRY_DSN",
    "SENTRY_ENVIRONMENT",
    "MODEL_PATH",
    "N_CTX",
    "N_THREADS",
    "N_GPU_LAYERS",
    "MAX_TOKENS",
    "TEMPERATURE",
    "PERSONA",
    "ML_PARALLEL",
    "TYPING_SIMULATION_ENABLED",
    "TYPING_CHARS_PER_SECOND",
    "TYPING_JITTER",
    "TYPING_READ_PAUSE_SECONDS",
    "TYPING_MIN_DELAY_SECONDS",
    "TYPING_MAX_DELAY_SECONDS",
    "WORKER_CONCURRENCY",
    "MESSAGE_RETENTION_DAYS",
    "BACKUP_DIR",
    "OPENAI_API_KEYS",
]
REQUIRED_SECRETS = {
    "DB_PASSWORD",
    "REDIS_PASSWORD",
    "TELEGRAM_BOT_TOKEN",
    "TELEGRAM_WEBHOOK_SECRET",
    "SECRET_KEY",
    "JWT_SECRET_KEY",
    "ENCRYPTION_KEY",
    "GRAFANA_ADMIN_PASSWORD",
}

# ${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?message}; $${...} is an escape, not a variable
VAR_RE = re.compile(r"(?<!\$)\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}")


def load(name: str) -> dict[str, Any]:
    data = yaml.safe_load((COMPOSE_DIR / name).read_text())
    assert isinstance(data, dict)
    return data


def env_example() -> dict[str, str]:
    values = {}
    for line in (COMPOSE_DIR / ".env.example").read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, sep, value = line.partition("=")
            assert sep, f"not KEY=VALUE: {line!r}"
            assert key not in values, f"{key} twice in .env.example"
            values[key.strip()] = value
    return values


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return load("compose.yaml")


def test_env_example_lives_only_in_compose() -> None:
    assert (COMPOSE_DIR / ".env.example").is_file()
    assert not (ROOT / ".env.example").exists()


def test_every_variable_is_in_env_example() -> None:
    documented = env_example()
    comments = (COMPOSE_DIR / ".env.example").read_text()
    for name in ("compose.yaml", "compose.gpu.yaml"):
        for var, op, _default in VAR_RE.findall((COMPOSE_DIR / name).read_text()):
            assert var in documented, f"{name}: ${{{var}}} is missing from compose/.env.example"
            if var in REQUIRED_SECRETS:
                assert op == ":?", f"{name}: secret {var} must be required (${{{var}:?...}})"
    for var in CONTRACT_VARS:
        assert var in documented or re.search(rf"\b{var}\b", comments), var
    for var in REQUIRED_SECRETS:
        assert "change-me" in documented[var], f"{var}: the template holds a placeholder"


def test_aiconv_services_share_one_image_and_run_their_mode(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for name, mode in AICONV_SERVICES.items():
        s = services[name]
        assert s["image"] == "${AICONV_IMAGE:-aiconv:latest}", name
        assert s["build"] == {"context": "..", "dockerfile": "Dockerfile"}, name
        assert s["command"] == [mode], name
        env = s["environment"]
        for var in (
            "DB_HOST",
            "DB_PASSWORD",
            "REDIS_HOST",
            "REDIS_PASSWORD",
            "TELEGRAM_BOT_TOKEN",
            "SECRET_KEY",
            "ENCRYPTION_KEY",
            "METRICS_PORT",
        ):
            assert var in env, f"{name}: {var}"
        assert env["DB_HOST"] == "postgres" and env["REDIS_HOST"] == "redis"
        assert s.get("read_only") is True and s.get("cap_drop") == ["ALL"], name
    assert services["migrate"]["restart"] == "no"
    assert services["migrate"]["depends_on"] == {"postgres": {"condition": "service_healthy"}}


def test_long_running_services_wait_for_migrate_and_report_ready(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for name in LONG_RUNNING:
        s = services[name]
        assert s["depends_on"] == {
            "postgres": {"condition": "service_healthy"},
            "redis": {"condition": "service_healthy"},
            "migrate": {"condition": "service_completed_successfully"},
        }, name
        test = " ".join(s["healthcheck"]["test"])
        assert "urllib.request" in test and "127.0.0.1:8001/ready" in test, name
        assert s["environment"]["METRICS_PORT"] == "8001"
    assert services["web"]["environment"]["PORT"] == "8000"


def test_datastores_nginx_and_monitoring(compose: dict[str, Any]) -> None:
    services = compose["services"]
    pg = services["postgres"]
    assert "pg_isready" in " ".join(pg["healthcheck"]["test"])
    assert any(v.endswith(":/var/lib/postgresql/data") for v in pg["volumes"])
    assert "ping" in services["redis"]["healthcheck"]["test"]
    assert "backend" in compose["networks"] and compose["networks"]["backend"]["internal"]
    assert pg["networks"] == ["backend"] and services["redis"]["networks"] == ["backend"]
    assert "ports" not in pg and "ports" not in services["redis"]

    nginx = services["nginx"]
    assert nginx["depends_on"] == {
        "cert-init": {"condition": "service_completed_successfully"},
        "web": {"condition": "service_healthy"},
    }
    assert "../nginx/nginx.conf:/etc/nginx/nginx.conf:ro" in nginx["volumes"]
    assert any(v.endswith(":/etc/nginx/certs:ro") for v in nginx["volumes"])
    assert {p.split(":")[-1] for p in nginx["ports"]} == {"80", "443"}
    cert = services["cert-init"]
    assert cert["restart"] == "no" and cert["entrypoint"][-1] == "/cert-init.sh"
    # nothing but nginx listens on all interfaces
    for name, s in services.items():
        for port in s.get("ports", []):
            assert name == "nginx" or str(port).startswith("127.0.0.1:"), (name, port)

    prom = services["prometheus"]
    assert "./prometheus:/etc/prometheus:ro" in prom["volumes"]
    grafana = services["grafana"]
    assert "./grafana/provisioning:/etc/grafana/provisioning:ro" in grafana["volumes"]
    assert "./grafana/dashboards:/var/lib/grafana/dashboards:ro" in grafana["volumes"]


def test_bind_mounted_files_exist(compose: dict[str, Any]) -> None:
    defaults = env_example()
    for name, s in compose["services"].items():
        for volume in s.get("volumes", []):
            # variables first: a default such as ${WEBHOOK_SOURCES:-any} holds a colon
            volume = VAR_RE.sub(lambda m: defaults.get(m.group(1), m.group(3) or ""), volume)
            source = volume.split(":")[0]
            if source.startswith("."):
                path = (COMPOSE_DIR / source).resolve()
                made_at_start = {"certs", "models", "backups"}  # created by compose on first up
                assert path.exists() or path.name in made_at_start, f"{name}: {source}"


def test_gpu_override_reserves_a_gpu_for_cuda_ml() -> None:
    ml = load("compose.gpu.yaml")["services"]["ml"]
    assert ml["build"]["dockerfile"] == "Dockerfile.cuda"
    assert "cuda" in ml["image"]
    [device] = ml["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"]
    assert "N_GPU_LAYERS" in ml["environment"]


def test_prometheus_scrapes_every_aiconv_service_on_the_ops_port(compose: dict[str, Any]) -> None:
    config = yaml.safe_load((COMPOSE_DIR / "prometheus" / "prometheus.yml").read_text())
    jobs = {j["job_name"]: j for j in config["scrape_configs"]}
    for service in LONG_RUNNING:
        [sd] = jobs[f"aiconv-{service}"]["dns_sd_configs"]
        assert sd["names"] == [service] and sd["port"] == 8001
        assert service in compose["services"]
    assert config["rule_files"] == [ALERTS_FILE.name]


def test_grafana_provisioning_points_at_prometheus_and_the_dashboards_folder() -> None:
    base = COMPOSE_DIR / "grafana" / "provisioning"
    [ds] = yaml.safe_load((base / "datasources" / "prometheus.yml").read_text())["datasources"]
    assert ds["type"] == "prometheus" and ds["url"] == "http://prometheus:9090"
    [provider] = yaml.safe_load((base / "dashboards" / "aiconv.yml").read_text())["providers"]
    assert provider["options"]["path"] == "/var/lib/grafana/dashboards"
    assert (COMPOSE_DIR / "grafana" / "dashboards").is_dir()


def test_promtool_checks_rules_and_config(tmp_path: Path) -> None:
    promtool = require_tool("promtool")
    rules = subprocess.run(
        [promtool, "check", "rules", str(ALERTS_FILE)], capture_output=True, text=True, timeout=60
    )
    assert rules.returncode == 0, rules.stdout + rules.stderr
    assert "SUCCESS" in rules.stdout
    config = subprocess.run(
        [
            promtool,
            "check",
            "config",
            "--syntax-only",
            str(COMPOSE_DIR / "prometheus" / "prometheus.yml"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert config.returncode == 0, config.stdout + config.stderr


def test_docker_compose_config_when_the_plugin_is_there(tmp_path: Path) -> None:
    """Optional: the compose plugin's own parser (not on Debian; no engine needed)."""
    docker = shutil.which("docker")
    if (
        docker is None
        or subprocess.run(
            [docker, "compose", "version"], capture_output=True, timeout=30
        ).returncode
        != 0
    ):
        pytest.skip("docker compose plugin not installed (optional; the checks above ran)")
    env_file = tmp_path / ".env"
    env_file.write_text((COMPOSE_DIR / ".env.example").read_text())
    for files in (["compose.yaml"], ["compose.yaml", "compose.gpu.yaml"]):
        args = [docker, "compose", "--env-file", str(env_file)]
        for f in files:
            args += ["-f", str(COMPOSE_DIR / f)]
        result = subprocess.run(
            [*args, "config", "--quiet"], capture_output=True, text=True, timeout=60
        )
        assert result.returncode == 0, result.stderr


def test_third_party_images_are_pinned_to_exact_versions(compose: dict[str, Any]) -> None:
    """Issue 13, item 11: no floating tag (latest, 16-alpine) on anything pulled."""
    exact = re.compile(r"[a-z0-9./-]+:v?\d+\.\d+(\.\d+)?(-[a-z0-9.]+)?(@sha256:[0-9a-f]{64})?")
    for name, service in compose["services"].items():
        image = service["image"]
        if name in AICONV_SERVICES:
            continue  # this project's image, built by `just build`
        assert exact.fullmatch(image), f"{name}: {image} is not an exact version"
