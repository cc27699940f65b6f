-- "The user blocked the bot" is kept apart from "an admin blocked the user".
--
-- A Telegram 403 used to set users.blocked, the admin flag, and nothing cleared it: a user who
-- once blocked the bot was ignored forever. From here on users.blocked is the admin's alone
-- (only an admin clears it) and a 403 sets blocked_bot_at, which the user's next update clears
-- (writing again means they unblocked the bot).
--
-- Rows blocked before this migration cannot be told apart; they stay admin-blocked, the safe
-- reading. An operator who knows some were 403s clears them with the admin API's unblock.

ALTER TABLE users ADD COLUMN blocked_bot_at TIMESTAMPTZ;  -- NULL: not blocked by the user

COMMENT ON COLUMN users.blocked IS 'an admin blocked the user: their updates are ignored';
COMMENT ON COLUMN users.blocked_bot_at IS
    'when Telegram last answered 403 (the user blocked the bot); cleared by their next update';
