"""Each setting is defined once: the README table, the defaults and the errors all come from it."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from aiconv import config
from aiconv.config import ConfigError, Settings, variables

README = Path(__file__).resolve().parents[2] / "README.md"
NAMES = [spec.name for _, spec in variables()]


def test_the_readme_table_is_the_one_generated_from_the_definitions() -> None:
    readme = README.read_text(encoding="utf-8")
    assert config.with_table(readme) == readme, (
        "README's configuration table differs from aiconv/config.py: "
        "run `python -m aiconv.config --update-readme`"
    )


def test_every_variable_has_one_row_and_one_field() -> None:
    rows = config.markdown_table().splitlines()[2:]
    assert len(NAMES) == len(set(NAMES)) == len(dataclasses.fields(Settings))
    assert [row.split(" | ")[0] for row in rows] == [f"| `{name}`" for name in NAMES]


def test_update_readme_rewrites_only_the_table(tmp_path: Path) -> None:
    readme = tmp_path / "README.md"
    readme.write_text(f"before\n{config.README_BEGIN}\n| old |\n{config.README_END}\nafter\n")
    assert config.main(["--update-readme", str(readme)]) == 0
    text = readme.read_text()
    assert text.startswith(f"before\n{config.README_BEGIN}\n| variable | default | meaning |")
    assert "| old |" not in text
    assert text.endswith(f"{config.README_END}\nafter\n")
    with pytest.raises(ValueError, match="markers"):
        config.with_table("no table here")


def test_an_empty_environment_gives_the_declared_defaults() -> None:
    # Values derived from other settings (URLs from their parts, LOG_FORMAT) agree with the
    # defaults declared next to them.
    assert Settings.from_env({}) == Settings()


def test_importing_settings_imports_no_service_client_nor_stage() -> None:
    forbidden = (
        *("redis", "psycopg", "psycopg_pool", "prometheus_client"),
        *("aiconv.worker", "aiconv.jobs", "aiconv.ml", "aiconv.web", "aiconv.store.db"),
    )
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, aiconv.config; print('\\n'.join(sys.modules))",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    loaded = result.stdout.split()
    assert "aiconv.config" in loaded
    assert [m for m in loaded if m.split(".")[0] in forbidden or m.startswith(forbidden)] == []


def test_secrets_stay_out_of_the_settings_repr() -> None:
    secret = "Rq3vX9tLw2Kp8ZmB5nYc7HdF4jGs6QaE"
    settings = Settings.from_env(
        {
            "TELEGRAM_BOT_TOKEN": f"123:{secret}",
            "DB_PASSWORD": secret,
            "JWT_SECRET_KEY": secret,
            "OPENAI_API_KEYS": secret,
        }
    )
    assert secret in settings.database_url
    assert secret not in repr(settings)


def test_the_stage_options_are_built_from_the_flat_settings() -> None:
    settings = Settings.from_env(
        {
            "TURN_DEBOUNCE_SECONDS": "0.5",
            "TELEGRAM_RATE_CHAT_PER_SECOND": "2",
            "JOB_MAX_DELIVERIES": "9",
            "SCHEDULE_BACKUP_SECONDS": "7200",
            "TYPING_JITTER": "0",
        }
    )
    assert settings.turns.debounce_seconds == 0.5
    assert settings.rate_limits.chat_per_second == 2.0
    assert settings.consumer_options(concurrency=3).max_deliveries == 9
    assert settings.schedule.backup_seconds == 7200.0
    assert settings.pacing.jitter == 0.0


values = st.one_of(
    st.text(max_size=40),
    st.sampled_from(["0", "-1", "1e400", "nan", "inf", "1.5", "true", "off", "", "  7 ", "0x10"]),
    st.integers(-(10**6), 10**6).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(str),
)


# No deadline: a loaded machine makes an example slow, never wrong.
@hypothesis_settings(deadline=None)
@given(name=st.sampled_from(NAMES), value=values)
def test_any_value_is_accepted_or_blamed_on_its_own_variable(name: str, value: str) -> None:
    try:
        Settings.from_env({name: value})
    except ConfigError as error:
        # The one rule that may blame another variable: a (valid) webhook URL needs its secret.
        if error.variable == "TELEGRAM_WEBHOOK_SECRET" and name == "TELEGRAM_WEBHOOK_URL":
            assert "required when TELEGRAM_WEBHOOK_URL is set" in str(error)
        else:
            assert error.variable == name
        assert str(error).startswith(f"{error.variable}: ")
        assert "\n" not in str(error)


PACING = [n for n in NAMES if n.startswith("TYPING_") and n != "TYPING_SIMULATION_ENABLED"]
numbers = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True).map(str),
    st.floats(-2, 40).map(lambda x: f"{x:.3f}"),
)


@hypothesis_settings(deadline=None)
@given(env=st.dictionaries(st.sampled_from(PACING), numbers))
def test_accepted_pacing_settings_always_make_a_valid_typing_plan(env: dict[str, str]) -> None:
    try:
        settings = Settings.from_env(env)
    except ConfigError as error:
        assert error.variable in env
        return
    assert settings.pacing.chars_per_second > 0  # PacingConfig's own checks raised nothing


def test_every_declared_secret_is_handed_to_the_error_report_scrubber() -> None:
    secret = "Rq3vX9tLw2Kp8ZmB5nYc7HdF4jGs6QaE"
    env = {
        "TELEGRAM_BOT_TOKEN": f"123:{secret}A",
        "TELEGRAM_WEBHOOK_SECRET": f"{secret}B",
        "JWT_SECRET_KEY": f"{secret}C,{secret}D",
        "ENCRYPTION_KEY": f"{secret}E,{secret}F",
        "SECRET_KEY": f"{secret}G",
        "OPENAI_API_KEYS": f"{secret}H, {secret}I",
        "DATABASE_URL": f"postgresql://u:{secret}J%2F@db/aiconv",
        "REDIS_PASSWORD": f"{secret}K",
    }
    values = Settings.from_env(env).secret_values()
    for suffix in "ABCDEFGHIK":
        assert f"{secret}{suffix}" in values
    assert f"{secret}J/" in values  # a URL's password, as the service receives it
    assert f"{secret}A" in values  # the bot token's secret part, which URLs carry alone
    assert "u" not in values and "123" not in values


def test_a_password_part_is_checked_only_where_it_is_used() -> None:
    production = {"ENVIRONMENT": "production", "TELEGRAM_BOT_TOKEN": "123:real-token-value"}
    stale = {**production, "DB_PASSWORD": "change-me", "REDIS_PASSWORD": "change-me"}
    urls = {"DATABASE_URL": "postgresql://u:k2J8vQ0x@db/a", "REDIS_URL": "redis://:Hn4wPq7s@r:1/0"}
    Settings.from_env({**stale, **urls})  # the URLs are used; the stale parts are not
    with pytest.raises(ConfigError, match=r"^DB_PASSWORD: is a placeholder"):
        Settings.from_env(stale)


def test_a_field_not_declared_as_a_setting_is_named() -> None:
    @dataclasses.dataclass
    class Plain:
        bind_address: str = "0.0.0.0"

    with pytest.raises(TypeError, match=r"Settings\.bind_address is not declared with setting"):
        config._spec(dataclasses.fields(Plain)[0])


def test_integer_items_parse_ids_and_name_a_bad_one() -> None:
    assert config.integer_items(" 12, -100200300,,7 ") == (12, -100200300, 7)
    with pytest.raises(ValueError, match=r"expected an integer, got 'x'"):
        config.integer_items("1,x")
