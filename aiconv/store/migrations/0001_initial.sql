-- Users, chats and the messages between them.

CREATE TABLE users (
    id            BIGINT PRIMARY KEY,              -- Telegram user id
    username      TEXT,
    first_name    TEXT,
    language_code TEXT,
    blocked       BOOLEAN NOT NULL DEFAULT false,  -- the user blocked the bot, or an admin blocked them
    created_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at    TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE chats (
    id                    BIGINT PRIMARY KEY,      -- Telegram chat id
    type                  TEXT NOT NULL,           -- private, group, supergroup, channel
    title                 TEXT,
    history_starts_after  BIGINT NOT NULL DEFAULT 0, -- /reset: messages up to this id are forgotten
    settings              JSONB NOT NULL DEFAULT '{}'::jsonb,
    created_at            TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at            TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE messages (
    id                  BIGSERIAL PRIMARY KEY,
    chat_id             BIGINT NOT NULL REFERENCES chats (id) ON DELETE CASCADE,
    user_id             BIGINT REFERENCES users (id) ON DELETE SET NULL,
    role                TEXT NOT NULL CHECK (role IN ('user', 'assistant', 'system')),
    text                TEXT NOT NULL,
    -- Each stored effect carries the key of the job that made it, so a redelivered job
    -- finds its row instead of writing a second one.
    idempotency_key     TEXT NOT NULL UNIQUE,
    telegram_update_id  BIGINT,
    telegram_message_id BIGINT,
    reply_to_message_id BIGINT,
    prompt_tokens       INTEGER,
    completion_tokens   INTEGER,
    generation_seconds  DOUBLE PRECISION,
    first_token_seconds DOUBLE PRECISION,
    created_at          TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE INDEX messages_chat_recent ON messages (chat_id, id DESC);
CREATE INDEX messages_created_at ON messages (created_at);
