-- Whether a message's text is encrypted is stated, never guessed from the text.
--
-- Before this, text starting with `enc1:` was read as ciphertext: a user who wrote such a text
-- made their chat unreadable. From here on every row says what its text is. Rows written before
-- (NULL) keep the old rule, narrowed to the old ciphertext's exact shape (aiconv.store.crypto).

ALTER TABLE messages ADD COLUMN text_sealed BOOLEAN;

COMMENT ON COLUMN messages.text_sealed IS
    'true: text is AES-256-GCM encrypted (base64), bound to chat_id and idempotency_key; '
    'false: plain text; NULL: written before migration 0004 (old format)';
