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
        ({"REDIS_CLUSTER_ENABLED": "true"}, "REDIS_CLUSTER_NODES"),
        ({"REDIS_CLUSTER_NODES": "nohost"}, "REDIS_CLUSTER_NODES"),
        ({"REDIS_SHARDS": "0"}, "REDIS_SHARDS"),
        ({"TYPING_MIN_DELAY_SECONDS": "30", "TYPING_MAX_DELAY_SECONDS": "5"}, "TYPING_MIN_DELAY"),
        ({"TYPING_JITTER": "3"}, "TYPING_JITTER"),
    ],
)
def test_a_bad_value_names_its_variable(env: dict[str, str], variable: str) -> None:
    with pytest.raises(ConfigError) as caught:
        Settings.from_env(env)
    assert str(caught.value).startswith(variable)


STRONG = "Rq3vX9tLw2Kp8ZmB5nYc7HdF4jGs6QaE"  # 32 random characters
STRONG_KEY = "1NmwbwpsQ0Uq5yRLXPMrE0M9q0n_J8v8XUPjTOEBZ_A="  # 32 random bytes, URL-safe base64
PRODUCTION = {"ENVIRONMENT": "production", "TELEGRAM_BOT_TOKEN": "123:real-token-value"}


def test_production_refuses_placeholder_secrets() -> None:
    assert Settings.from_env(PRODUCTION).log_format == "json"
    with pytest.raises(ConfigError, match=r"^SECRET_KEY"):
        Settings.from_env({**PRODUCTION, "SECRET_KEY": "change-me-please"})
    with pytest.raises(ConfigError, match=r"^TELEGRAM_BOT_TOKEN"):
        Settings.from_env({"ENVIRONMENT": "production"})


def test_production_accepts_strong_secrets() -> None:
    settings = Settings.from_env(
        {
            **PRODUCTION,
            "TELEGRAM_WEBHOOK_URL": "https://bot.example.org/webhook",
            "TELEGRAM_WEBHOOK_SECRET": STRONG,
            "SECRET_KEY": STRONG[::-1],
            "JWT_SECRET_KEY": "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08,"
            + STRONG[::-1],
            "OPENAI_API_KEYS": f"sk-{STRONG},sk-{STRONG[::-1]}",
            "ENCRYPTION_KEY": f"{STRONG_KEY},an-older-passphrase-key",
            "DB_PASSWORD": "k2J8vQ0x",
            "REDIS_URL": "redis://:Hn4wPq7s@cache:6379/0",
        }
    )
    assert settings.jwt_secret_key and settings.encryption_key


@pytest.mark.parametrize(
    ("variable", "value", "problem"),
    [
        # the probe's findings
        ("TELEGRAM_WEBHOOK_SECRET", "x", "needs 32+"),
        ("JWT_SECRET_KEY", "a", "needs 32+"),
        ("OPENAI_API_KEYS", "change-me", "needs 32+"),
        ("ENCRYPTION_KEY", "password12345678", "is a placeholder"),
        ("DB_PASSWORD", "change-me-db-password", "is a placeholder"),
        ("REDIS_PASSWORD", "change-me-redis-password", "is a placeholder"),
        ("DATABASE_URL", "postgresql://u:change-me-db@db/aiconv", "is a placeholder"),
        ("REDIS_URL", "redis://:CHANGE_ME@cache:6379/0", "is a placeholder"),
        # placeholders, whatever the case and separators
        ("JWT_SECRET_KEY", "Change_Me-" + STRONG, "is a placeholder"),
        ("JWT_SECRET_KEY", STRONG + "CHANGE ME", "is a placeholder"),
        ("JWT_SECRET_KEY", "change.me." + STRONG, "is a placeholder"),
        ("SECRET_KEY", "<your-secret-key-of-32-characters-here>", "is a placeholder"),
        ("TELEGRAM_WEBHOOK_SECRET", "Your_Secret_" + STRONG, "is a placeholder"),
        ("TELEGRAM_BOT_TOKEN", "Change-Me-Bot-Token", "is a placeholder"),
        # long but not secret
        ("JWT_SECRET_KEY", "a" * 64, "too predictable"),
        ("JWT_SECRET_KEY", f"{STRONG},old-short-key", "needs 32+"),
        ("JWT_SECRET_KEY", "abc" * 12, "too predictable"),
        ("OPENAI_API_KEYS", f"{STRONG},0123456789abcdefghijklmnopqrstuvwxyz", "too predictable"),
        ("TELEGRAM_WEBHOOK_SECRET", "Kq8vRz2m" * 5, "too predictable"),
        # the encrypting key: 32 random bytes, base64 or hex
        ("ENCRYPTION_KEY", STRONG, "32 random bytes"),  # 32 characters, not 32 bytes
        ("ENCRYPTION_KEY", "ab" * 16, "32 random bytes"),  # 16 bytes of hex
        ("ENCRYPTION_KEY", "00" * 32, "not random"),
        ("ENCRYPTION_KEY", "QUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUE=", "not random"),
        ("ENCRYPTION_KEY", f"{STRONG_KEY},change-me-old-key", "is a placeholder"),
    ],
)
def test_production_refuses_weak_secrets(variable: str, value: str, problem: str) -> None:
    with pytest.raises(ConfigError) as caught:
        Settings.from_env({**PRODUCTION, variable: value})
    assert caught.value.variable == variable
    assert problem in str(caught.value)
    if len(value) > 3:
        assert value not in str(caught.value)  # the error line never shows the secret
    Settings.from_env({variable: value})  # development accepts it


@pytest.mark.parametrize(
    "key",
    [
        STRONG_KEY,
        STRONG_KEY.rstrip("="),
        "sVD3NELKxUHwa6s2oYAdD8rfQAo+8d/AkTg6vz5SHQc=",
        "b0f3c2a1d4e5f60718293a4b5c6d7e8f9a0b1c2d3e4f5a6b7c8d9e0f1a2b3c4d",
    ],
)
def test_production_takes_a_32_byte_key_in_base64_or_hex(key: str) -> None:
    assert Settings.from_env({**PRODUCTION, "ENCRYPTION_KEY": key}).encryption_key == key


@pytest.mark.parametrize(
    ("env", "problem"),
    [
        pytest.param(
            {**PRODUCTION, "JWT_SECRET_KEY": "change-me"},
            "JWT_SECRET_KEY: needs 32+ random characters in production; make one with "
            "`openssl rand -hex 32`",
            id="a weak secret",
        ),
        pytest.param(
            {"N_CTX": "lots"}, "N_CTX: expected an integer, got 'lots'", id="not an integer"
        ),
    ],
)
def test_a_bad_setting_stops_the_cli_with_one_line_naming_it_and_exit_code_2(
    env: dict[str, str], problem: str
) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "aiconv.cli", "worker"],
        env={**env, "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [f"aiconv: configuration error: {problem}"]


def test_every_mode_has_help() -> None:
    for mode in ("web", "worker", "ml", "all", "migrate", "demo"):
        result = subprocess.run(
            [sys.executable, "-m", "aiconv.cli", mode, "--help"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 0 and f"aiconv {mode}" in result.stdout
