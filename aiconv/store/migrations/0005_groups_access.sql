-- Groups, forum topics, supergroup migration, the bot's membership, and who may use the bot.
--
-- * messages.context_only: an unaddressed group message kept for the prompt's context. It is
--   never answered, so the recovery sweep must not count it as owed a reply.
-- * messages.message_thread_id: the forum topic a message belongs to (NULL outside topics), so
--   history is read per (chat, topic) and a reply goes back to its topic.
-- * chats.migrated_to_chat_id: a group that became a supergroup. Its rows stay where they are
--   (encrypted text is bound to its chat id and cannot be moved); the supergroup's history reads
--   them through this alias.
-- * chats.bot_status and chat_member_events: the bot's own membership (my_chat_member updates).
--   A chat the bot was removed from is not answered.
-- * access_grants: users and chats allowed at run time by the admin API (ACCESS_MODE=allowlist),
--   on top of ALLOWED_USER_IDS / ALLOWED_CHAT_IDS.

ALTER TABLE messages ADD COLUMN context_only BOOLEAN NOT NULL DEFAULT false;
ALTER TABLE messages ADD COLUMN message_thread_id BIGINT;

COMMENT ON COLUMN messages.context_only IS
    'an unaddressed group message kept as context: never answered, never owed a reply';
COMMENT ON COLUMN messages.message_thread_id IS 'forum topic of the message; NULL outside topics';

-- The daily token quota sums a user's generated tokens since UTC midnight.
CREATE INDEX messages_user_tokens ON messages (user_id, created_at) WHERE role = 'assistant';

ALTER TABLE chats ADD COLUMN migrated_to_chat_id BIGINT;
ALTER TABLE chats ADD COLUMN bot_status TEXT;
ALTER TABLE chats ADD COLUMN bot_status_at TIMESTAMPTZ;

CREATE INDEX chats_migrated_to ON chats (migrated_to_chat_id) WHERE migrated_to_chat_id IS NOT NULL;

COMMENT ON COLUMN chats.migrated_to_chat_id IS
    'the supergroup this group became; its history continues there';
COMMENT ON COLUMN chats.bot_status IS
    'the bot''s membership from the latest my_chat_member: member, administrator, left, kicked, ...';

CREATE TABLE chat_member_events (
    id           BIGSERIAL PRIMARY KEY,
    chat_id      BIGINT NOT NULL,
    update_id    BIGINT NOT NULL UNIQUE,   -- a redelivered update is recorded once
    by_user_id   BIGINT,                   -- who added or removed the bot
    old_status   TEXT NOT NULL,
    new_status   TEXT NOT NULL,
    happened_at  TIMESTAMPTZ NOT NULL,     -- Telegram's date of the change
    created_at   TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE INDEX chat_member_events_chat ON chat_member_events (chat_id, id DESC);

CREATE TABLE access_grants (
    kind        TEXT NOT NULL CHECK (kind IN ('user', 'chat')),
    id          BIGINT NOT NULL,
    granted_by  TEXT NOT NULL,             -- the admin token's subject
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (kind, id)
);
