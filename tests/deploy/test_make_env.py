"""compose/make-env.py, which `just up` runs first: it writes compose/.env from the template with
random secrets strong enough for aiconv's production checks, takes the bot token from the
environment (or asks on a terminal), defaults to long polling, refuses in one line when it
cannot, and never rewrites an existing file."""

from __future__ import annotations

import ast
import importlib.util
import os
import re
import stat
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
import yaml

from aiconv.config import ConfigError, Settings

from ._support import COMPOSE_DIR, ROOT, interpolate, require_tool

SCRIPT = COMPOSE_DIR / "make-env.py"
TEMPLATE = COMPOSE_DIR / ".env.example"
TOKEN = "123456789:AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsaw1"
SECRETS = (
    "DB_PASSWORD",
    "REDIS_PASSWORD",
    "TELEGRAM_WEBHOOK_SECRET",
    "SECRET_KEY",
    "JWT_SECRET_KEY",
    "ENCRYPTION_KEY",
    "GRAFANA_ADMIN_PASSWORD",
)


def load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("make_env", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


make_env = load()


def values(path: Path) -> dict[str, str]:
    out = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            key, sep, value = line.partition("=")
            assert sep, line
            assert key not in out, f"{key} twice"
            out[key] = value
    return out


def no_docker(tmp_path: Path) -> dict[str, str]:
    """An environment whose PATH has no docker (so no volume is looked up)."""
    empty = tmp_path / "bin-empty"
    empty.mkdir(exist_ok=True)
    return {"PATH": str(empty)}


def generate(
    tmp_path: Path,
    name: str = ".env",
    template: Path = TEMPLATE,
    **env: str,
) -> tuple[int, Path]:
    output = tmp_path / name
    code = make_env.main(
        ["--template", str(template), "--output", str(output)],
        {**no_docker(tmp_path), "TELEGRAM_BOT_TOKEN": TOKEN, **env},
        interactive=False,
    )
    return code, output


def aiconv_envs(dotenv: dict[str, str]) -> dict[str, dict[str, str]]:
    """Each aiconv service's environment as compose makes it from compose.yaml and this .env."""
    services = yaml.safe_load((COMPOSE_DIR / "compose.yaml").read_text())["services"]
    return {
        name: {k: interpolate(str(v), dotenv) for k, v in services[name]["environment"].items()}
        for name in ("migrate", "web", "worker", "ml")
    }


def test_first_run_writes_random_secrets_for_every_placeholder(tmp_path: Path) -> None:
    code, output = generate(tmp_path)
    assert code == 0
    assert stat.S_IMODE(output.stat().st_mode) == 0o600
    got, template = values(output), values(TEMPLATE)
    assert set(got) == set(template), "every template variable, no other"
    assert not [name for name, value in got.items() if "change-me" in value.lower()]
    for name in SECRETS:
        assert "change-me" in template[name]
        assert re.fullmatch(r"[0-9a-f]{64}", got[name]), f"{name}: 32 random bytes in hex"
    assert len({got[name] for name in SECRETS}) == len(SECRETS), "each secret its own"
    # everything else is the template's
    for name, value in template.items():
        if name not in (*SECRETS, "TELEGRAM_BOT_TOKEN"):
            assert got[name] == value, name
    assert got["TELEGRAM_BOT_TOKEN"] == TOKEN
    # a second install gets other secrets
    _, other = generate(tmp_path, ".env2")
    assert not {values(other)[n] for n in SECRETS} & {got[n] for n in SECRETS}


def test_the_generated_file_passes_the_production_checks_of_every_service(
    tmp_path: Path,
) -> None:
    for attempt in range(20):  # random output: check a few draws, not one lucky one
        code, output = generate(tmp_path, f".env{attempt}")
        assert code == 0
        dotenv = values(output)
        assert dotenv["ENVIRONMENT"] == "production"
        for name, env in aiconv_envs(dotenv).items():  # `:?` variables all set, or it raises
            try:
                settings = Settings.from_env(env)
            except ConfigError as error:
                pytest.fail(f"{name}: {error}")
            assert settings.environment == "production"
            assert settings.telegram_bot_token == TOKEN
            assert not settings.webhook_mode, "long polling when no public URL is given"
            assert settings.encryption_key == dotenv["ENCRYPTION_KEY"]
            assert settings.jwt_secret_key == dotenv["JWT_SECRET_KEY"]


def test_the_template_placeholders_themselves_fail_production(tmp_path: Path) -> None:
    """The check above is not vacuous: the template as it is does not pass."""
    env = aiconv_envs({**values(TEMPLATE), "TELEGRAM_BOT_TOKEN": TOKEN})["web"]
    with pytest.raises(ConfigError):
        Settings.from_env(env)


def test_an_openai_key_is_generated_when_the_template_has_a_placeholder(tmp_path: Path) -> None:
    assert values(TEMPLATE)["OPENAI_API_KEYS"] == "", "the shipped template leaves /v1 off"
    template = tmp_path / "template"
    template.write_text(
        TEMPLATE.read_text().replace(
            "OPENAI_API_KEYS=\n", "OPENAI_API_KEYS=change-me-openai-api-key\n"
        )
    )
    code, output = generate(tmp_path, template=template)
    assert code == 0
    dotenv = values(output)
    assert re.fullmatch(r"[0-9a-f]{64}", dotenv["OPENAI_API_KEYS"])
    settings = Settings.from_env(aiconv_envs(dotenv)["web"])
    assert settings.openai_api_keys == (dotenv["OPENAI_API_KEYS"],)


def test_an_existing_file_is_never_rewritten(tmp_path: Path) -> None:
    code, output = generate(tmp_path)
    assert code == 0
    before = output.read_bytes()
    mtime = output.stat().st_mtime_ns
    for env in ({}, {"TELEGRAM_BOT_TOKEN": "987654321:" + "B" * 35}, {"TELEGRAM_BOT_TOKEN": ""}):
        code = make_env.main(
            ["--output", str(output)], {**no_docker(tmp_path), **env}, interactive=False
        )
        assert code == 0
        assert output.read_bytes() == before
        assert output.stat().st_mtime_ns == mtime


def test_an_existing_file_with_placeholders_is_refused_in_production_and_kept(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    output = tmp_path / ".env"
    output.write_text(TEMPLATE.read_text())  # copied by hand, never edited
    code = make_env.main(["--output", str(output)], no_docker(tmp_path), interactive=False)
    assert code == 2
    line = capsys.readouterr().err
    assert line.count("\n") == 1
    assert "DB_PASSWORD" in line and "TELEGRAM_BOT_TOKEN" in line
    assert output.read_text() == TEMPLATE.read_text()
    # ENVIRONMENT=dev accepts placeholders (as the app does)
    output.write_text(TEMPLATE.read_text().replace("ENVIRONMENT=production", "ENVIRONMENT=dev"))
    assert make_env.main(["--output", str(output)], no_docker(tmp_path), interactive=False) == 0


def run_script(output: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """The script run as a user would, non-interactively (no terminal on stdin), writing
    `output`: this process's environment without TELEGRAM_BOT_TOKEN, then `env`."""
    inherited = {k: v for k, v in os.environ.items() if k != "TELEGRAM_BOT_TOKEN"}
    return subprocess.run(
        [sys.executable, str(SCRIPT), "--output", str(output)],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        env={**inherited, **env},
        timeout=30,
    )


def test_without_a_token_a_non_interactive_run_fails_in_one_line_and_writes_nothing(
    tmp_path: Path,
) -> None:
    output = tmp_path / ".env"
    result = run_script(output, **no_docker(tmp_path))
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.count("\n") == 1, result.stderr
    assert "TELEGRAM_BOT_TOKEN is not set" in result.stderr
    assert not output.exists()
    assert list(tmp_path.iterdir()) == [tmp_path / "bin-empty"], "no temporary file left"


def test_the_token_from_the_environment_is_used_and_a_bad_one_refused(tmp_path: Path) -> None:
    output = tmp_path / ".env"
    result = run_script(output, **no_docker(tmp_path), TELEGRAM_BOT_TOKEN=TOKEN)
    assert result.returncode == 0, result.stderr
    assert values(output)["TELEGRAM_BOT_TOKEN"] == TOKEN
    assert "long polling" in result.stderr
    assert TOKEN not in result.stderr, "the token is not echoed"
    code, bad = generate(tmp_path, ".env-bad", TELEGRAM_BOT_TOKEN="change-me-bot-token")
    assert code == 2 and not bad.exists()


def test_the_token_is_asked_on_a_terminal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    answers = iter(["not a token", f"  {TOKEN}  "])
    monkeypatch.setattr(make_env.getpass, "getpass", lambda prompt: next(answers))
    output = tmp_path / ".env"
    code = make_env.main(["--output", str(output)], no_docker(tmp_path), interactive=True)
    assert code == 0
    assert values(output)["TELEGRAM_BOT_TOKEN"] == TOKEN
    assert "does not look like a bot token" in capsys.readouterr().err


def test_a_public_url_from_the_environment_selects_the_webhook(tmp_path: Path) -> None:
    url = "https://bot.example.org/webhook"
    code, output = generate(tmp_path, TELEGRAM_WEBHOOK_URL=url)
    assert code == 0
    dotenv = values(output)
    assert dotenv["TELEGRAM_WEBHOOK_URL"] == url
    assert dotenv["TLS_DOMAIN"] == "bot.example.org"
    settings = Settings.from_env(aiconv_envs(dotenv)["web"])
    assert settings.webhook_mode and settings.telegram_webhook_url == url
    code, refused = generate(tmp_path, ".env-http", TELEGRAM_WEBHOOK_URL="http://bot/webhook")
    assert code == 2 and not refused.exists()


def test_a_missing_file_beside_an_old_database_volume_is_refused(tmp_path: Path) -> None:
    """A new DB_PASSWORD would not open the existing volume (nor the key read its messages)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    docker = bin_dir / "docker"
    calls = tmp_path / "calls"
    for exists, expected in ((True, 2), (False, 0)):
        docker.write_text(f'#!/bin/sh\necho "$@" >> {calls}\nexit {0 if exists else 1}\n')
        docker.chmod(0o755)
        output = tmp_path / f".env-{exists}"
        code = make_env.main(
            ["--output", str(output)],
            {"PATH": str(bin_dir), "TELEGRAM_BOT_TOKEN": TOKEN},
            interactive=False,
        )
        assert code == expected
        assert output.exists() == (not exists)
    assert calls.read_text().splitlines() == ["volume inspect aiconv_pgdata"] * 2


def test_the_script_needs_only_the_standard_library() -> None:
    tree = ast.parse(SCRIPT.read_text())
    imported: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module.split(".")[0])
    assert imported - {"__future__"} <= sys.stdlib_module_names, imported


def dry_run(recipe: str) -> list[str]:
    just = require_tool("just")
    result = subprocess.run(
        [just, "--justfile", str(ROOT / "Justfile"), "--dry-run", recipe],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr
    return [line.strip() for line in result.stderr.splitlines() if line.strip()]


@pytest.mark.parametrize(
    ("recipe", "compose"),
    [
        ("up", "docker compose -f compose/compose.yaml up -d --wait"),
        (
            "up-gpu",
            "docker compose -f compose/compose.yaml -f compose/compose.gpu.yaml up -d --wait",
        ),
    ],
)
def test_up_writes_the_env_file_before_starting_compose(recipe: str, compose: str) -> None:
    lines = dry_run(recipe)
    assert lines == ["python3 compose/make-env.py", compose], lines


def test_readme_documents_the_first_start() -> None:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("### Small install: docker compose", 1)[1].split("\n### ", 1)[0]
    for needed in ("just up", "TELEGRAM_BOT_TOKEN", "make-env.py", "long polling"):
        assert needed in section, needed
