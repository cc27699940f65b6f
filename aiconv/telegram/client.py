"""Minimal async Telegram Bot API client.

The bot token is part of every URL, so no error raised here ever includes an httpx
exception's text or the request URL. No retries: callers own the retry policy.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import httpx

from aiconv.observability.metrics import TELEGRAM_CALLS, TELEGRAM_RATE_LIMITED
from aiconv.telegram.models import (
    BotCommand,
    ChatMember,
    parse_bot_commands,
    parse_chat_member,
)

# Extra seconds on top of a getUpdates long-poll so the HTTP timeout never fires first.
_LONG_POLL_MARGIN = 10.0


class TelegramError(Exception):
    """A Bot API call failed. Never contains the bot token."""

    def __init__(
        self,
        method: str,
        status: int | None,
        description: str,
        error_code: int | None = None,
    ) -> None:
        self.method = method
        self.status = status
        self.description = description
        self.error_code = error_code
        super().__init__(f"{method} failed (status={status}): {description}")

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(method={self.method!r}, status={self.status!r}, "
            f"description={self.description!r}, error_code={self.error_code!r})"
        )


class RetryAfter(TelegramError):
    """429 Too Many Requests; wait `retry_after` seconds before the next call."""

    def __init__(
        self,
        method: str,
        status: int | None,
        description: str,
        error_code: int | None,
        retry_after: float,
    ) -> None:
        super().__init__(method, status, description, error_code)
        self.retry_after = retry_after


class Forbidden(TelegramError):
    """403, e.g. the user blocked the bot; retrying will not help."""


class BadRequest(TelegramError):
    """400, e.g. empty or too long text, unknown chat."""


class ServerError(TelegramError):
    """5xx from Telegram; usually transient."""


class NetworkError(TelegramError):
    """Transport failure or timeout; no HTTP status.

    `maybe_processed`: the request was fully sent and the answer was lost (a read timeout, a
    dropped connection), so Telegram may have acted on it. Connection failures are definite.
    """

    def __init__(self, method: str, description: str, maybe_processed: bool = False) -> None:
        super().__init__(method, None, description)
        self.maybe_processed = maybe_processed


# Transport errors after which the request may have reached Telegram and been acted on.
_AMBIGUOUS = (httpx.ReadTimeout, httpx.ReadError, httpx.RemoteProtocolError)


def _redact(text: str, token: str) -> str:
    # Telegram descriptions should not echo the token, but be safe anyway.
    return text.replace(token, "<token>") if token else text


class BotClient:
    def __init__(self, http: httpx.AsyncClient, base_url: str, token: str) -> None:
        self._http = http
        self._base_url = base_url.rstrip("/")
        self._token = token

    def __repr__(self) -> str:
        return f"BotClient(base_url={self._base_url!r})"

    async def _call(
        self, method: str, params: dict[str, Any], http_timeout: float | None = None
    ) -> Any:
        url = f"{self._base_url}/bot{self._token}/{method}"
        payload = {k: v for k, v in params.items() if v is not None}
        kwargs: dict[str, Any] = {"json": payload}
        if http_timeout is not None:
            kwargs["timeout"] = http_timeout
        try:
            response = await self._http.post(url, **kwargs)
        except httpx.RequestError as exc:
            TELEGRAM_CALLS.labels(method, "0").inc()
            # `from None`: the httpx exception's message and request carry the URL/token.
            raise NetworkError(
                method,
                f"network error: {type(exc).__name__}",
                maybe_processed=isinstance(exc, _AMBIGUOUS),
            ) from None
        TELEGRAM_CALLS.labels(method, str(response.status_code)).inc()
        if response.status_code == 429:
            TELEGRAM_RATE_LIMITED.labels(method).inc()
        try:
            body = response.json()
        except ValueError:
            body = None
        if not isinstance(body, dict):
            raise self._error(method, response.status_code, {})
        if response.status_code == 200 and body.get("ok") is True:
            return body.get("result")
        raise self._error(method, response.status_code, body)

    def _error(self, method: str, status: int, body: dict[str, Any]) -> TelegramError:
        raw_desc = body.get("description")
        desc = _redact(str(raw_desc), self._token) if raw_desc is not None else f"HTTP {status}"
        code = body.get("error_code")
        error_code = code if isinstance(code, int) and not isinstance(code, bool) else None
        effective = error_code or status
        if effective == 429:
            params = body.get("parameters")
            retry_after = 1.0
            if isinstance(params, dict) and isinstance(params.get("retry_after"), int | float):
                retry_after = float(params["retry_after"])
            return RetryAfter(method, status, desc, error_code, retry_after)
        if effective == 403:
            return Forbidden(method, status, desc, error_code)
        if effective == 400:
            return BadRequest(method, status, desc, error_code)
        if effective >= 500:
            return ServerError(method, status, desc, error_code)
        return TelegramError(method, status, desc, error_code)

    async def get_me(self) -> dict[str, Any]:
        result = await self._call("getMe", {})
        if not isinstance(result, dict):
            raise TelegramError("getMe", 200, "unexpected result")
        return result

    async def set_webhook(self, url: str, secret_token: str, allowed_updates: list[str]) -> None:
        await self._call(
            "setWebhook",
            {"url": url, "secret_token": secret_token, "allowed_updates": allowed_updates},
        )

    async def delete_webhook(self, drop_pending_updates: bool = False) -> None:
        await self._call("deleteWebhook", {"drop_pending_updates": drop_pending_updates})

    async def get_updates(
        self,
        offset: int | None,
        timeout: int,  # noqa: ASYNC109 - Telegram's long-poll seconds, not a local deadline
        allowed_updates: list[str],
    ) -> list[dict[str, Any]]:
        result = await self._call(
            "getUpdates",
            {"offset": offset, "timeout": timeout, "allowed_updates": allowed_updates},
            http_timeout=timeout + _LONG_POLL_MARGIN,
        )
        if not isinstance(result, list):
            raise TelegramError("getUpdates", 200, "unexpected result")
        return [u for u in result if isinstance(u, dict)]

    async def send_message(
        self,
        chat_id: int,
        text: str,
        *,
        reply_to: int | None = None,
        entities: Sequence[Mapping[str, Any]] | None = None,
        message_thread_id: int | None = None,
    ) -> int:
        """Send `text` with its `entities` (no parse_mode: nothing for Telegram to misparse).

        `reply_to` goes as `reply_parameters` (the legacy `reply_to_message_id` is deprecated),
        allowing the send when that message was deleted meanwhile: the answer still arrives.
        """
        reply_parameters = (
            {"message_id": reply_to, "allow_sending_without_reply": True}
            if reply_to is not None
            else None
        )
        result = await self._call(
            "sendMessage",
            {
                "chat_id": chat_id,
                "message_thread_id": message_thread_id,
                "text": text,
                "entities": [dict(e) for e in entities] if entities else None,
                "reply_parameters": reply_parameters,
            },
        )
        message_id = result.get("message_id") if isinstance(result, dict) else None
        if not isinstance(message_id, int):
            raise TelegramError("sendMessage", 200, "unexpected result")
        return message_id

    async def send_chat_action(
        self, chat_id: int, action: str = "typing", *, message_thread_id: int | None = None
    ) -> None:
        await self._call(
            "sendChatAction",
            {"chat_id": chat_id, "action": action, "message_thread_id": message_thread_id},
        )

    async def send_message_draft(
        self,
        chat_id: int,
        draft_id: int,
        text: str,
        *,
        entities: Sequence[Mapping[str, Any]] | None = None,
        message_thread_id: int | None = None,
        http_timeout: float | None = None,
    ) -> None:
        """Show a private chat the reply being written (Bot API 9.3): `text` replaces the
        draft `draft_id` (non-zero); the answer itself is then sent with sendMessage."""
        await self._call(
            "sendMessageDraft",
            {
                "chat_id": chat_id,
                "message_thread_id": message_thread_id,
                "draft_id": draft_id,
                "text": text,
                "entities": [dict(e) for e in entities] if entities else None,
            },
            http_timeout=http_timeout,
        )

    # --- the command menu and chat members (aiconv.worker.commands) --------------------------

    async def set_my_commands(self, commands: list[BotCommand]) -> None:
        await self._call("setMyCommands", {"commands": [c.to_api() for c in commands]})

    async def get_my_commands(self) -> list[BotCommand]:
        result = await self._call("getMyCommands", {})
        try:
            return parse_bot_commands(result)
        except ValueError as error:
            raise TelegramError("getMyCommands", 200, str(error)) from None

    async def get_chat_member(self, chat_id: int, user_id: int) -> ChatMember:
        result = await self._call("getChatMember", {"chat_id": chat_id, "user_id": user_id})
        try:
            return parse_chat_member(result)
        except ValueError as error:
            raise TelegramError("getChatMember", 200, str(error)) from None
