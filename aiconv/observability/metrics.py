"""Every Prometheus metric aiconv exports, in one place (dashboards and alerts use these names).

Under several granian workers, `aiconv web` sets PROMETHEUS_MULTIPROC_DIR before they start; the
metrics then live in shared files and the ops port merges them (see `registry()`).
"""

from __future__ import annotations

import os

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    generate_latest,
    multiprocess,
)

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
SLOW_BUCKETS = (0.1, 0.25, 0.5, 1, 2, 4, 8, 15, 30, 60, 120, 300)

# -- web ------------------------------------------------------------------------------------
HTTP_REQUESTS = Counter(
    "aiconv_http_requests_total", "HTTP requests served", ["route", "method", "status"]
)
HTTP_LATENCY = Histogram(
    "aiconv_http_request_duration_seconds",
    "HTTP request latency",
    ["route"],
    buckets=LATENCY_BUCKETS,
)
UPDATES_RECEIVED = Counter(
    "aiconv_updates_received_total",
    "Telegram updates accepted (webhook or polling), by kind: text, command, media, other, "
    "duplicate",
    ["kind"],
)

# -- job layer ------------------------------------------------------------------------------
JOBS = Counter(
    "aiconv_jobs_total",
    "Jobs finished, by stream and outcome: ok, retried, waiting (dependency down), "
    "dead_lettered, claimed (taken over from a dead consumer)",
    ["stream", "outcome"],
)
JOB_DURATION = Histogram(
    "aiconv_job_duration_seconds",
    "Time from start to acknowledgement of a job",
    ["stream"],
    buckets=SLOW_BUCKETS,
)
STREAM_LENGTH = Gauge(
    "aiconv_stream_length", "Entries in the stream", ["stream"], multiprocess_mode="max"
)
STREAM_LAG = Gauge(
    "aiconv_stream_lag",
    "Entries not yet read by the stream's consumer group",
    ["stream"],
    multiprocess_mode="max",
)
STREAM_PENDING = Gauge(
    "aiconv_stream_pending",
    "Entries read but not yet acknowledged",
    ["stream"],
    multiprocess_mode="max",
)
STREAM_OLDEST_PENDING_AGE = Gauge(
    "aiconv_stream_oldest_pending_age_seconds",
    "Age of the oldest unacknowledged entry",
    ["stream"],
    multiprocess_mode="max",
)
DLQ_SIZE = Gauge(
    "aiconv_dlq_size", "Jobs in the dead-letter streams (all of them)", multiprocess_mode="max"
)

# -- generation -----------------------------------------------------------------------------
GENERATION_SECONDS = Histogram(
    "aiconv_generation_duration_seconds", "Time to generate one reply", buckets=SLOW_BUCKETS
)
TIME_TO_FIRST_TOKEN = Histogram(
    "aiconv_time_to_first_token_seconds",
    "Time from generation start to the first token",
    buckets=SLOW_BUCKETS,
)
TOKENS = Counter("aiconv_tokens_total", "Tokens processed, by kind: prompt, completion", ["kind"])
TOKENS_PER_SECOND = Histogram(
    "aiconv_generation_tokens_per_second",
    "Decode speed of one generation",
    buckets=(5, 10, 20, 40, 80, 160, 320, 640, 1280),
)
GENERATIONS = Counter(
    "aiconv_generations_total", "Generations, by outcome: ok, failed, cancelled", ["outcome"]
)
MODEL_LOADED = Gauge(
    "aiconv_model_loaded", "1 when this ml process has its model loaded", multiprocess_mode="max"
)

# -- delivery -------------------------------------------------------------------------------
TYPING_SECONDS = Histogram(
    "aiconv_typing_simulation_seconds",
    "Time spent 'typing' before a reply part was sent",
    buckets=SLOW_BUCKETS,
)
REPLY_LATENCY = Histogram(
    "aiconv_reply_latency_seconds",
    "From the user's message to the first part of the reply",
    buckets=SLOW_BUCKETS,
)
REPLIES = Counter(
    "aiconv_replies_total", "Replies, by outcome: delivered, superseded, blocked", ["outcome"]
)
MESSAGES_SENT = Counter("aiconv_messages_sent_total", "Telegram messages sent (reply parts)")
TELEGRAM_CALLS = Counter(
    "aiconv_telegram_api_calls_total",
    "Bot API calls, by method and HTTP status (0: no answer)",
    ["method", "status"],
)
TELEGRAM_RATE_LIMITED = Counter(
    "aiconv_telegram_rate_limited_total", "Bot API calls answered 429", ["method"]
)
TELEGRAM_SEND_RETRIES = Counter(
    "aiconv_telegram_send_retries_total",
    "sendMessage calls retried, by reason: server_error, network, rate_limited",
    ["reason"],
)
TURNS_RECOVERED = Counter(
    "aiconv_turns_recovered_total",
    "Turns queued again by a sweep, by reason: lost_job (lease ran out), unanswered (PostgreSQL)",
    ["reason"],
)
REPLY_PARTS_UNCERTAIN = Counter(
    "aiconv_reply_parts_uncertain_total",
    "Reply parts whose sendMessage answer was lost after sending; counted as sent, never resent",
)
REPLY_FORMAT_FALLBACKS = Counter(
    "aiconv_reply_format_fallbacks_total",
    "Replies sent as plain text because their Markdown could not be sent as entities",
    ["reason"],  # convert_error, empty, invalid, rejected (Telegram refused the entities)
)

# -- capacity-aware pacing ------------------------------------------------------------------
TURN_ESTIMATED_WAIT = Histogram(
    "aiconv_turn_estimated_wait_seconds",
    "Estimated wait of each turn for the model when it is queued (queue position and capacity)",
    buckets=(1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600, 1200),
)
BUSY_NOTICES = Counter(
    "aiconv_busy_notices_total",
    "Turns whose user was told of a long wait (BUSY_NOTICE_SECONDS); the reply still comes",
)
TURNS_DECLINED = Counter(
    "aiconv_turns_declined_total",
    "Turns answered with 'overloaded' instead of queued (MAX_QUEUE_WAIT_SECONDS)",
)
CHAT_ACTIONS = Counter(
    "aiconv_chat_actions_total",
    "'typing' chat actions, by outcome: sent, skipped (Bot API budget taken), failed",
    ["outcome"],
)
DRAFTS = Counter(
    "aiconv_drafts_total",
    "Streamed drafts (REPLY_STYLE=draft), by outcome: sent, skipped (Bot API budget taken), failed",
    ["outcome"],
)
ML_CAPACITY = Gauge(
    "aiconv_ml_capacity",
    "Capacity the live ml instances publish, summed, as a worker last read it, by figure: "
    "slots, busy, instances, turns_per_second (measured), tokens_per_second (measured), "
    "service_rate (generations a second when every slot is busy)",
    ["figure"],
    multiprocess_mode="max",
)
GENERATE_QUEUE_AHEAD = Gauge(
    "aiconv_generate_queue_waiting",
    "Generation jobs waiting unread in the generate stream, as a worker last read it",
    multiprocess_mode="max",
)

# -- storage and business -------------------------------------------------------------------
DB_POOL_CONNECTIONS = Gauge(
    "aiconv_db_pool_connections",
    "PostgreSQL pool connections, by state: size, idle, waiting (requests queued)",
    ["state"],
    multiprocess_mode="livesum",
)
ACTIVE_USERS = Gauge(
    "aiconv_active_users", "Users who wrote in the window", ["window"], multiprocess_mode="max"
)
CONVERSATIONS = Gauge(
    "aiconv_conversations",
    "Chats with a message in the window",
    ["window"],
    multiprocess_mode="max",
)
STORED_MESSAGES = Gauge(
    "aiconv_stored_messages", "Messages stored, by role", ["role"], multiprocess_mode="max"
)
SCHEDULED_RUNS = Counter(
    "aiconv_scheduled_runs_total",
    "Embedded scheduler runs, by task and outcome",
    ["task", "outcome"],  # not "job": Prometheus reserves that label for the scrape target
)
BACKGROUND_ERRORS = Counter(
    "aiconv_background_errors_total",
    "Errors of auxiliary loops (gauges, webhook registration...), each followed by a retry",
    ["loop"],
)
DEPENDENCY_UP = Gauge(
    "aiconv_dependency_up",
    "1 when this process's last readiness check reached the dependency (postgres, redis)",
    ["dependency"],
    multiprocess_mode="liveall",
)


# --- groups and access control (aiconv.worker.access, aiconv.worker.updates) -------------------

ACCESS_REFUSED = Counter(
    "aiconv_access_refused_total",
    "Messages not answered by policy, by reason: refused (not on the allow-list), quota (daily "
    "tokens used up), burst (USER_MESSAGES_PER_MINUTE)",
    ["reason"],
)
GROUP_MESSAGES = Counter(
    "aiconv_group_messages_total",
    "Group messages by outcome: addressed (answered), context (kept, not answered), ignored",
    ["outcome"],
)


def registry() -> CollectorRegistry | None:
    """The registry to expose: merged from files in multiprocess mode, else the default."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        merged = CollectorRegistry()
        multiprocess.MultiProcessCollector(merged)  # type: ignore[no-untyped-call]
        ProcessCollector(registry=merged)  # this (the serving) process's memory and start time
        return merged
    return None


def exposition() -> bytes:
    merged = registry()
    return generate_latest(merged) if merged is not None else generate_latest()


DB_REPLICA_LAG = Gauge(
    "aiconv_db_replica_lag_seconds",
    "Replay lag of the PostgreSQL read replica at this process's last check (0: caught up)",
    multiprocess_mode="livemax",
)
DB_REPLICA_UP = Gauge(
    "aiconv_db_replica_up",
    "1 when this process's last check reached the PostgreSQL read replica",
    multiprocess_mode="livemin",
)
DB_REPLICA_FALLBACKS = Counter(
    "aiconv_db_replica_fallbacks_total",
    "Lag-tolerant reads served by the primary, by reason: down, lagging",
    ["reason"],
)
COMMANDS = Counter(
    "aiconv_commands_total",
    "Bot commands handled, by command (start, help, reset, retry, persona, stats, unknown) and "
    "outcome (ok, refused: not a group admin, too_long: persona over PERSONA_MAX_CHARS, "
    "nothing: /retry with nothing to retry, quota: daily tokens used up, unchecked: "
    "getChatMember failed)",
    ["command", "outcome"],
)
ADMIN_CHECKS = Counter(
    "aiconv_admin_checks_total",
    "Is this group member an admin, by source: cache (Redis, ADMIN_CACHE_SECONDS), asked "
    "(getChatMember answered), failed (getChatMember failed: the change is refused for now)",
    ["source"],
)
COMMAND_MENU = Counter(
    "aiconv_command_menu_total",
    "Command menu registrations at start, by outcome: set (setMyCommands called), unchanged "
    "(getMyCommands already matched)",
    ["outcome"],
)
