-- Commands: a chat's own persona (/persona) and regenerated answers (/retry).
--
-- * chats.persona: the chat's system prompt set by /persona; NULL = the PERSONA setting. Stored
--   like message text: encrypted when ENCRYPTION_KEY is set (persona_sealed says which), bound
--   to its chat, so it cannot be moved onto another chat.
-- * messages.retry: a /retry command kept in the history as a marker. It is a user row (the
--   turn that answers it is owed, and the recovery sweep sees it like any unanswered message),
--   but never shown to the model: the history read for a prompt drops the marker and the answer
--   it retries (conversation.history.drop_retried: found by reply_to_message_id, so an answer
--   still being written when /retry came counts), so the new turn answers the same user
--   message(s) again.
--   Nothing already sent is touched; the old answer only leaves the model's context.

ALTER TABLE chats ADD COLUMN persona TEXT;
ALTER TABLE chats ADD COLUMN persona_sealed BOOLEAN;

COMMENT ON COLUMN chats.persona IS
    'the chat''s system prompt set by /persona; NULL: the PERSONA setting';
COMMENT ON COLUMN chats.persona_sealed IS
    'true: persona is AES-256-GCM encrypted, bound to the chat; false: plain text';

ALTER TABLE messages ADD COLUMN retry BOOLEAN NOT NULL DEFAULT false;

COMMENT ON COLUMN messages.retry IS
    'a /retry marker: answered by a new turn over the user messages before it; never in a prompt';
