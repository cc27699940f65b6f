"""Settings from the environment: names from the deployment guide, one clear error per problem."""

from __future__ import annotations

import subprocess
import sys

import pytest

from aiconv.config import ConfigError, Settings


def test_defaults_work_for_development() -> None:
    settings = Settings.from_env({})
    assert settings.environment == "dev"
    assert settings.telegram_api_url == "https://api.telegram.org"
    assert not settings.webhook_mode
    assert settings.resolved_model_path().name.endswith(".gguf")
    assert settings.pacing.enabled


def test_database_and_redis_urls_are_built_from_parts() -> None:
    settings = Settings.from_env(
        {
            "DB_HOST": "db",
            "DB_PORT": "6432",
            "DB_NAME": "ai_conversation",
            "DB_USER": "ai user",
            "DB_PASSWORD": "p@ss/word",
            "REDIS_HOST": "cache",
            "REDIS_PORT": "6380",
            "REDIS_PASSWORD": "r:pw",
        }
    )
    assert settings.database_url == "postgresql://ai%20user:p%40ss%2Fword@db:6432/ai_conversation"
    assert settings.redis_url == "redis://:r%3Apw@cache:6380/0"


def test_urls_win_over_parts() -> None:
    settings = Settings.from_env(
        {
            "DATABASE_URL": "postgresql://u@h/d",
            "DB_HOST": "ignored",
            "REDIS_URL": "redis://r:1/2",
        }
    )
    assert settings.database_url == "postgresql://u@h/d"
    assert settings.redis_url == "redis://r:1/2"


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        ({"N_CTX": "lots"}, "N_CTX"),
        ({"N_CTX": "16"}, "N_CTX"),
        ({"TEMPERATURE": "hot"}, "TEMPERATURE"),
        ({"TYPING_SIMULATION_ENABLED": "maybe"}, "TYPING_SIMULATION_ENABLED"),
        ({"TELEGRAM_WEBHOOK_URL": "https://x.example/webhook"}, "TELEGRAM_WEBHOOK_SECRET"),
        ({"TELEGRAM_WEBHOOK_URL": "ftp://x"}, "TELEGRAM_WEBHOOK_URL"),
        ({"TELEGRAM_WEBHOOK_SECRET": "has spaces"}, "TELEGRAM_WEBHOOK_SECRET"),
        ({"TELEGRAM_API_URL": "api.telegram.org"}, "TELEGRAM_API_URL"),
        ({"DATABASE_URL": "mysql://x"}, "DATABASE_URL"),
        ({"REDIS_URL": "http://x"}, "REDIS_URL"),
        ({"MODEL_PATH": "/nonexistent/model.gguf"}, "MODEL_PATH"),
        ({"ENVIRONMENT": "staging"}, "ENVIRONMENT"),
        ({"LOG_LEVEL": "loud"}, "LOG_LEVEL"),
        ({"REDIS_CLUSTER_ENABLED": "true"}, "REDIS_CLUSTER_ENABLED"),
        ({"TYPING_MIN_DELAY_SECONDS": "30", "TYPING_MAX_DELAY_SECONDS": "5"}, "TYPING_MIN_DELAY"),
        ({"TYPING_JITTER": "3"}, "TYPING_JITTER"),
    ],
)
def test_a_bad_value_names_its_variable(env: dict[str, str], variable: str) -> None:
    with pytest.raises(ConfigError) as caught:
        Settings.from_env(env)
    assert str(caught.value).startswith(variable)


def test_production_refuses_placeholder_secrets() -> None:
    base = {"ENVIRONMENT": "production", "TELEGRAM_BOT_TOKEN": "123:real-token-value"}
    assert Settings.from_env(base).log_format == "json"
    with pytest.raises(ConfigError, match=r"^SECRET_KEY"):
        Settings.from_env({**base, "SECRET_KEY": "change-me-please"})
    with pytest.raises(ConfigError, match=r"^TELEGRAM_BOT_TOKEN"):
        Settings.from_env({"ENVIRONMENT": "production"})


def test_the_cli_stops_with_one_line_and_exit_code_2() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "aiconv.cli", "worker"],
        env={"N_CTX": "lots", "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "aiconv: configuration error: N_CTX: expected an integer, got 'lots'"
    ]


def test_every_mode_has_help() -> None:
    for mode in ("web", "worker", "ml", "all", "migrate", "demo"):
        result = subprocess.run(
            [sys.executable, "-m", "aiconv.cli", mode, "--help"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 0 and f"aiconv {mode}" in result.stdout
