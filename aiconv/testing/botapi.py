"""An in-process Telegram Bot API double served over real HTTP on loopback.

Test and demo tooling, not product: used by the tests and by `aiconv demo`, so that the code
under test talks to it exactly as it would to api.telegram.org (set TELEGRAM_API_URL to
`double.url`). Served by granian, the server the product itself uses.

With `limits` (opt-in: most tests check behaviour, not pacing), it enforces Telegram's documented
sending limits as Telegram does, with 429 and `retry_after`: about one message a second in a
chat, about 30 a second overall, 20 a minute in a group (https://core.telegram.org/bots/faq,
"My bot is hitting limits"). Telegram "may allow short bursts that go over this limit", so each
limit is a GCRA with a tolerance: a steady rate above the limit is refused, a short burst is
not. Messages and drafts count against a chat's limits; those and chat actions against the
bot-wide one.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self
from urllib.parse import parse_qsl

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp

from aiconv.web.server import serve

MAX_MESSAGE_LENGTH = 4096  # UTF-16 code units, as Telegram counts

# Which calls count against which sending limit (see TelegramLimits).
_CHAT_LIMITED = frozenset({"sendMessage", "sendMessageDraft"})
_GLOBAL_LIMITED = _CHAT_LIMITED | {"sendChatAction"}


@dataclass(frozen=True)
class TelegramLimits:
    """Telegram's documented sending limits, each an interval and a burst tolerance (seconds)."""

    chat_interval: float = 1.0
    chat_tolerance: float = 0.5
    global_interval: float = 1.0 / 30
    global_tolerance: float = 0.5
    group_interval: float = 3.0  # 20 a minute
    group_tolerance: float = 7.0  # a burst of a few messages


# Bot API MessageEntity types; sendMessage refuses any other.
ENTITY_TYPES = frozenset(
    {
        *("mention", "hashtag", "cashtag", "bot_command", "url", "email", "phone_number"),
        *("bold", "italic", "underline", "strikethrough", "spoiler", "code", "pre"),
        *("blockquote", "expandable_blockquote", "text_link", "text_mention", "custom_emoji"),
        "date_time",
    }
)


def _text_problem(text: object, params: dict[str, Any]) -> str | None:
    """What Telegram says about a message's (or draft's) text and its entities, or None."""
    if not isinstance(text, str) or not text.strip():
        return "Bad Request: message text is empty"
    if _utf16_units(text) > MAX_MESSAGE_LENGTH:
        return "Bad Request: message is too long"
    if "parse_mode" in params and "entities" in params:
        return "Bad Request: can't use parse_mode with entities"
    if "entities" in params:
        return entities_error(text, params["entities"])
    return None


def _utf16_units(text: str) -> int:
    return len(text.encode("utf-16-le", "surrogatepass")) // 2


def _json_field(value: Any) -> Any:
    """A structured parameter: JSON in a request body, or a JSON string in a form/query."""
    if isinstance(value, str):
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


def entities_error(text: str, raw: Any) -> str | None:
    """Telegram's 400 description for sendMessage `entities` that do not fit `text`, or None.

    Checked as Telegram does: a list of objects of known types whose offset and length (UTF-16
    code units) lie within the text; a text_link needs a url, a text_mention a user.
    """
    entities = _json_field(raw)
    if not isinstance(entities, list):
        return "Bad Request: can't parse entities: entities must be an array"
    size = _utf16_units(text)
    for entity in entities:
        if not isinstance(entity, dict):
            return "Bad Request: can't parse entities: entity must be an object"
        kind = entity.get("type")
        if kind not in ENTITY_TYPES:
            return f"Bad Request: can't parse entities: unsupported entity type {kind!r}"
        offset, length = entity.get("offset"), entity.get("length")
        if not (isinstance(offset, int) and isinstance(length, int)) or (
            isinstance(offset, bool) or isinstance(length, bool) or offset < 0 or length <= 0
        ):
            return "Bad Request: can't parse entities: wrong entity offset or length"
        if offset + length > size:
            return (
                f"Bad Request: can't parse entities: entity beginning at UTF-16 offset {offset} "
                f"ends after the end of the text at UTF-16 offset {size}"
            )
        if kind == "text_link" and not (isinstance(entity.get("url"), str) and entity["url"]):
            return "Bad Request: can't parse entities: text_link entity must have a url"
        if kind == "text_mention" and not isinstance(entity.get("user"), dict):
            return "Bad Request: can't parse entities: text_mention entity must have a user"
        if kind == "pre" and not isinstance(entity.get("language", ""), str):
            return "Bad Request: can't parse entities: pre language must be a string"
    return None


def _is_plain_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def reply_parameters_error(raw: Any) -> str | None:
    """Telegram's 400 description for malformed `reply_parameters`, or None."""
    params = _json_field(raw)
    if not isinstance(params, dict):
        return "Bad Request: can't parse reply parameters JSON object"
    if not _is_plain_int(params.get("message_id")):
        return "Bad Request: message to be replied not found"
    allow = params.get("allow_sending_without_reply", False)
    if not isinstance(allow, bool):
        return "Bad Request: can't parse reply parameters JSON object"
    return None


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now (the caller binds it next)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class _Started:
    """`async with` runs `start()` on entry and `stop()` on exit."""

    async def start(self) -> None:
        raise NotImplementedError

    async def stop(self) -> None:
        raise NotImplementedError

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()


class LoopbackServer(_Started):
    """Serve an ASGI app on 127.0.0.1 at a free port inside the running event loop.

    Served by the project's own granian helper (`aiconv.web.server.serve`), the server the
    product uses. Granian binds the port itself, so the port is picked free first; another
    process taking it in between makes the bind fail, and start-up then tries a fresh port.
    `start` returns once the port accepts connections, so callers never see a refusal.
    """

    START_ATTEMPTS = 5
    START_TIMEOUT = 10.0  # seconds for one attempt to accept connections

    def __init__(self, app: ASGIApp) -> None:
        self._app = app
        self._stop: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self.url = ""

    async def start(self) -> None:
        for attempt in range(1, self.START_ATTEMPTS + 1):
            port = free_port()
            stop = asyncio.Event()
            task = asyncio.create_task(serve(self._app, "127.0.0.1", port, stop))
            if await self._accepting(port, task):
                self._stop, self._task = stop, task
                self.url = f"http://127.0.0.1:{port}"
                return
            stop.set()
            try:
                await task
            except Exception:
                if attempt == self.START_ATTEMPTS:
                    raise  # surfaces the last bind error
        raise RuntimeError(f"loopback server did not start in {self.START_ATTEMPTS} attempts")

    async def _accepting(self, port: int, task: asyncio.Task[None]) -> bool:
        # True once the port accepts connections; False if serving ended or the deadline passed.
        deadline = time.monotonic() + self.START_TIMEOUT
        while not task.done() and time.monotonic() < deadline:
            try:
                _, writer = await asyncio.wait_for(
                    asyncio.open_connection("127.0.0.1", port), timeout=1.0
                )
            except (OSError, TimeoutError):
                await asyncio.sleep(0.005)  # polling the port: granian has no started event
                continue
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
            return not task.done()
        return False

    async def stop(self) -> None:
        if self._stop is None or self._task is None:
            return
        self._stop.set()
        await self._task
        self._stop = None
        self._task = None


@dataclass(frozen=True)
class ApiCall:
    method: str
    params: dict[str, Any]
    at: float  # time.monotonic() when the request arrived
    status: int


@dataclass
class _Fault:
    status: int
    description: str
    retry_after: int | None
    times: int


_DEFAULT_DESCRIPTIONS = {
    400: "Bad Request: injected failure",
    401: "Unauthorized",
    403: "Forbidden: bot was blocked by the user",
    404: "Not Found",
    409: "Conflict: injected failure",
    429: "Too Many Requests: retry later",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
}


def _as_int(value: Any) -> int | None:
    # Query and form parameters arrive as strings; Telegram accepts both.
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        try:
            return int(value)
        except ValueError:
            return None
    return None


def _decode_value(value: str) -> Any:
    # Telegram accepts JSON-serialised arrays/objects in form and query parameters.
    if value[:1] in "[{":
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


class BotApiDouble(_Started):
    """Fake Bot API: records every call, queues or webhooks user messages, injects faults.

    `calls` is in completion order; `ApiCall.at` is the arrival time.
    """

    def __init__(
        self,
        token: str = "123456:TEST-TOKEN",
        bot_username: str = "aiconv_test_bot",
        first_update_id: int = 100_000,
        first_message_id: int = 1,
        limits: TelegramLimits | None = None,
    ) -> None:
        self.token = token
        self.bot_username = bot_username
        self.calls: list[ApiCall] = []
        self.webhook_url: str | None = None
        self.webhook_secret: str | None = None
        self.allowed_updates: list[str] | None = None
        self.webhook_responses: list[tuple[int, int]] = []
        self.polling = 0  # getUpdates requests currently waiting
        self._queue: list[dict[str, Any]] = []
        self._faults: dict[str, list[_Fault]] = {}
        self._delays: dict[str, list[float]] = {}
        self._chat_types: dict[int, str] = {}
        self.bot_messages: dict[tuple[int, int], dict[str, Any]] = {}  # (chat, id) -> as sent
        # setMyCommands / getMyCommands: the default scope's menu, as last set.
        self.my_commands: list[dict[str, str]] = []
        # getChatMember: chat -> ids of its administrators (`creator` when first listed).
        self.chat_admins: dict[int, list[int]] = {}
        self.limits = limits
        self._tats: dict[str, float] = {}  # limit -> its GCRA theoretical arrival time
        self._next_update_id = first_update_id
        self._next_message_id = first_message_id
        self._cond = asyncio.Condition()
        self._stopping = False
        self._http: httpx.AsyncClient | None = None
        app = Starlette(
            routes=[Route("/bot{token}/{method}", self._handle, methods=["GET", "POST"])]
        )
        self._server = LoopbackServer(app)

    @property
    def url(self) -> str:
        return self._server.url

    # -- lifecycle ---------------------------------------------------------------------

    async def start(self) -> None:
        self._stopping = False
        self._http = httpx.AsyncClient(timeout=30.0)
        await self._server.start()

    async def stop(self) -> None:
        # Release pending long polls first, or graceful shutdown would wait them out.
        self._stopping = True
        await self._notify()
        await self._server.stop()
        if self._http is not None:
            await self._http.aclose()
            self._http = None

    # -- inspection --------------------------------------------------------------------

    def calls_of(self, method: str, chat_id: int | None = None) -> list[ApiCall]:
        return [
            c
            for c in self.calls
            if c.method == method
            and (chat_id is None or _as_int(c.params.get("chat_id")) == chat_id)
        ]

    def sent_messages(self, chat_id: int) -> list[dict[str, Any]]:
        """The messages the bot sent to a chat, in order, as Telegram stored them (with their
        entities)."""
        return [m for (chat, _), m in sorted(self.bot_messages.items()) if chat == chat_id]

    def drafts_of(self, chat_id: int) -> list[ApiCall]:
        """The drafts Telegram accepted for a chat, in the order they arrived."""
        return sorted(
            (c for c in self.calls_of("sendMessageDraft", chat_id) if c.status == 200),
            key=lambda c: c.at,
        )

    def rate_limited(self) -> list[ApiCall]:
        """Every call answered 429 (a fault injected with fail_next included)."""
        return [c for c in self.calls if c.status == 429]

    def sent_texts(self, chat_id: int) -> list[str]:
        return [
            str(c.params.get("text"))
            for c in self.calls_of("sendMessage", chat_id)
            if c.status == 200
        ]

    async def wait_for(
        self,
        predicate: Callable[[], bool],
        timeout: float = 30.0,  # noqa: ASYNC109 - the helpful timeout message is the point
    ) -> None:
        """Wait until predicate() holds; it is re-checked at every API call or update."""
        try:
            async with self._cond:
                await asyncio.wait_for(self._cond.wait_for(predicate), timeout)
        except TimeoutError:
            raise TimeoutError(
                f"condition not met within {timeout} s; API calls so far:\n{self.describe_calls()}"
            ) from None

    async def wait_for_messages(
        self,
        chat_id: int,
        count: int,
        timeout: float = 60.0,  # noqa: ASYNC109 - as wait_for
    ) -> list[str]:
        await self.wait_for(lambda: len(self.sent_texts(chat_id)) >= count, timeout)
        return self.sent_texts(chat_id)

    def describe_calls(self) -> str:
        if not self.calls:
            return "  (none)"
        lines = []
        for c in self.calls:
            params = {k: v for k, v in c.params.items() if k != "text"}
            if "text" in c.params:
                text = str(c.params["text"])
                params["text"] = text if len(text) <= 60 else text[:57] + "..."
            lines.append(f"  {c.method} -> {c.status} {params}")
        return "\n".join(lines)

    # -- driving -----------------------------------------------------------------------

    def fail_next(
        self,
        method: str,
        status: int,
        description: str | None = None,
        retry_after: int | None = None,
        times: int = 1,
    ) -> None:
        """Make the next `times` calls of `method` answer this error."""
        if status == 429 and retry_after is None:
            retry_after = 1
        desc = description or _DEFAULT_DESCRIPTIONS.get(status, f"Error {status}")
        self._faults.setdefault(method, []).append(_Fault(status, desc, retry_after, times))

    def clear_faults(self, method: str) -> None:
        """End the injected failures of `method` still to come (an outage is over)."""
        self._faults.pop(method, None)

    def delay_next(self, method: str, seconds: float, times: int = 1) -> None:
        """Make the next `times` calls of `method` answer only after `seconds` (a slow server)."""
        self._delays.setdefault(method, []).extend([seconds] * times)

    def make_update(
        self,
        chat_id: int,
        text: str | None = None,
        *,
        user_id: int | None = None,
        kind: str = "text",
        chat_type: str = "private",
        update_id: int | None = None,
        extra: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Build a realistic Update JSON for a user message; `extra` fields are added to the
        message as given (entities, reply_to_message, message_thread_id, ...)."""
        if update_id is None:
            update_id = self._next_update_id
            self._next_update_id += 1
        else:
            self._next_update_id = max(self._next_update_id, update_id + 1)
        message_id = self._take_message_id()
        uid = user_id if user_id is not None else abs(chat_id)
        user = {
            "id": uid,
            "is_bot": False,
            "first_name": f"User{uid}",
            "username": f"user{uid}",
            "language_code": "en",
        }
        chat: dict[str, Any] = {"id": chat_id, "type": chat_type}
        if chat_type == "private":
            chat.update(first_name=user["first_name"], username=user["username"])
        else:
            chat["title"] = f"Chat {chat_id}"
        self._chat_types[chat_id] = chat_type
        message: dict[str, Any] = {
            "message_id": message_id,
            "from": user,
            "chat": chat,
            "date": int(time.time()),
        }
        file_ids = {"file_id": f"FILE{message_id}", "file_unique_id": f"U{message_id}"}
        if kind == "text":
            message["text"] = text if text is not None else ""
            if message["text"].startswith("/"):
                command = message["text"].split(maxsplit=1)[0]
                message["entities"] = [{"type": "bot_command", "offset": 0, "length": len(command)}]
        else:
            if kind == "photo":
                message["photo"] = [
                    {**file_ids, "width": 90, "height": 60, "file_size": 1200},
                    {**file_ids, "width": 1280, "height": 853, "file_size": 98000},
                ]
            elif kind == "voice":
                message["voice"] = {
                    **file_ids,
                    "duration": 3,
                    "mime_type": "audio/ogg",
                    "file_size": 9000,
                }
            elif kind == "sticker":
                message["sticker"] = {
                    **file_ids,
                    "width": 512,
                    "height": 512,
                    "type": "regular",
                    "is_animated": False,
                    "is_video": False,
                    "emoji": "\U0001f600",
                }
            elif kind == "document":
                message["document"] = {
                    **file_ids,
                    "file_name": "notes.pdf",
                    "mime_type": "application/pdf",
                    "file_size": 20480,
                }
            elif kind == "video":
                message["video"] = {**file_ids, "width": 640, "height": 360, "duration": 5}
            elif kind == "audio":
                message["audio"] = {**file_ids, "duration": 120, "mime_type": "audio/mpeg"}
            else:
                raise ValueError(f"unknown message kind: {kind!r}")
            if text is not None:
                message["caption"] = text
        message.update(extra or {})
        return {"update_id": update_id, "message": message}

    async def send_user_message(
        self,
        chat_id: int,
        text: str | None = None,
        *,
        user_id: int | None = None,
        kind: str = "text",
        chat_type: str = "private",
        update_id: int | None = None,
        extra: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Deliver a user message by webhook if one is set, else queue it for getUpdates."""
        update = self.make_update(
            chat_id,
            text,
            user_id=user_id,
            kind=kind,
            chat_type=chat_type,
            update_id=update_id,
            extra=extra,
        )
        await self.deliver(update)
        return update

    def set_admins(self, chat_id: int, *user_ids: int) -> None:
        """getChatMember answers `creator` for the first id, `administrator` for the others,
        `member` for anyone else in this chat."""
        self.chat_admins[chat_id] = list(user_ids)

    # -- groups: mentions, replies, topics, membership, migration ------------------------

    def mention(self, text: str) -> list[dict[str, Any]]:
        """`mention` entities for every @bot_username in `text`, offsets in UTF-16 units."""
        needle = f"@{self.bot_username}"
        entities, start = [], text.find(needle)
        while start >= 0:
            offset = len(text[:start].encode("utf-16-le")) // 2
            entities.append({"type": "mention", "offset": offset, "length": len(needle)})
            start = text.find(needle, start + len(needle))
        return entities

    def bot_message(self, chat_id: int, message_id: int) -> dict[str, Any]:
        """A message the bot sent, as Telegram puts it in `reply_to_message`."""
        return self.bot_messages[(chat_id, message_id)]

    def make_update_of(self, kind: str, body: dict[str, Any]) -> dict[str, Any]:
        """An update of any other kind (`my_chat_member`, ...) with the next update id."""
        update_id = self._next_update_id
        self._next_update_id += 1
        return {"update_id": update_id, kind: body}

    def make_membership_update(
        self,
        chat_id: int,
        new_status: str,
        *,
        old_status: str = "left",
        by_user_id: int = 1,
        chat_type: str = "group",
    ) -> dict[str, Any]:
        """`my_chat_member`: the bot's status in a chat changed (member, left, kicked, ...)."""
        self._chat_types[chat_id] = chat_type
        bot = self._bot_user()
        return self.make_update_of(
            "my_chat_member",
            {
                "chat": {"id": chat_id, "type": chat_type, "title": f"Chat {chat_id}"},
                "from": {"id": by_user_id, "is_bot": False, "first_name": f"User{by_user_id}"},
                "date": int(time.time()),
                "old_chat_member": {"status": old_status, "user": bot},
                "new_chat_member": {"status": new_status, "user": bot},
            },
        )

    def make_migration_updates(
        self, group_id: int, supergroup_id: int
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """The two service messages Telegram sends when a group becomes a supergroup."""
        self._chat_types[supergroup_id] = "supergroup"
        sender = {"id": 1, "is_bot": False, "first_name": "User1"}
        date = int(time.time())
        in_group = {
            "message_id": self._take_message_id(),
            "from": sender,
            "chat": {"id": group_id, "type": "group", "title": f"Chat {group_id}"},
            "date": date,
            "migrate_to_chat_id": supergroup_id,
        }
        in_supergroup = {
            "message_id": self._take_message_id(),
            "from": sender,
            "chat": {"id": supergroup_id, "type": "supergroup", "title": f"Chat {group_id}"},
            "date": date,
            "migrate_from_chat_id": group_id,
        }
        return self.make_update_of("message", in_group), self.make_update_of(
            "message", in_supergroup
        )

    async def deliver(self, update: dict[str, Any]) -> None:
        """Deliver an arbitrary (possibly malformed) update the way Telegram would."""
        if self.webhook_url is not None:
            if self._http is None:
                raise RuntimeError("BotApiDouble is not started")
            headers = {}
            if self.webhook_secret:
                headers["X-Telegram-Bot-Api-Secret-Token"] = self.webhook_secret
            response = await self._http.post(self.webhook_url, json=update, headers=headers)
            uid = update.get("update_id")
            self.webhook_responses.append(
                (uid if isinstance(uid, int) else -1, response.status_code)
            )
        else:
            self._queue.append(update)
        await self._notify()

    # -- server side -------------------------------------------------------------------

    async def _notify(self) -> None:
        async with self._cond:
            self._cond.notify_all()

    def _take_message_id(self) -> int:
        message_id = self._next_message_id
        self._next_message_id += 1
        return message_id

    async def _params(self, request: Request) -> dict[str, Any]:
        params: dict[str, Any] = {k: _decode_value(v) for k, v in request.query_params.items()}
        body = await request.body()
        if not body:
            return params
        ctype = request.headers.get("content-type", "")
        if "application/json" in ctype:
            data = json.loads(body)
            if not isinstance(data, dict):
                raise ValueError("JSON body must be an object")
            params.update(data)
        elif "application/x-www-form-urlencoded" in ctype:
            text = body.decode()
            params.update({k: _decode_value(v) for k, v in parse_qsl(text, True)})
        return params

    async def _handle(self, request: Request) -> Response:
        arrived = time.monotonic()
        method = request.path_params["method"]
        try:
            params = await self._params(request)
        except ValueError:  # includes JSON and Unicode decode errors
            params = {}
            status, body = 400, self._error(400, "Bad Request: can't parse request body")
        else:
            status, body = await self._dispatch(request.path_params["token"], method, params)
        self.calls.append(ApiCall(method=method, params=params, at=arrived, status=status))
        await self._notify()
        return JSONResponse(body, status_code=status)

    @staticmethod
    def _error(status: int, description: str, retry_after: int | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {"ok": False, "error_code": status, "description": description}
        if retry_after is not None:
            body["parameters"] = {"retry_after": retry_after}
        return body

    async def _dispatch(
        self, token: str, method: str, params: dict[str, Any]
    ) -> tuple[int, dict[str, Any]]:
        if token != self.token:
            return 401, self._error(401, "Unauthorized")
        delays = self._delays.get(method)
        if delays:
            await asyncio.sleep(delays.pop(0))  # the injected slowness itself
        faults = self._faults.get(method)
        if faults:
            fault = faults[0]
            fault.times -= 1
            if fault.times <= 0:
                faults.pop(0)
            return fault.status, self._error(fault.status, fault.description, fault.retry_after)
        limited = self._over_limit(method, params)
        if limited is not None:
            return 429, self._error(
                429, f"Too Many Requests: retry after {limited}", retry_after=limited
            )
        handler = {
            "getMe": self._get_me,
            "setWebhook": self._set_webhook,
            "deleteWebhook": self._delete_webhook,
            "getUpdates": self._get_updates,
            "sendMessage": self._send_message,
            "sendChatAction": self._send_chat_action,
            "sendMessageDraft": self._send_message_draft,
            "setMyCommands": self._set_my_commands,
            "getMyCommands": self._get_my_commands,
            "getChatMember": self._get_chat_member,
        }.get(method)
        if handler is None:
            return 404, self._error(404, "Not Found")
        return await handler(params)

    def _over_limit(self, method: str, params: dict[str, Any]) -> int | None:
        """The retry_after (seconds) if this call exceeds a sending limit, else None; an
        accepted call takes its place under every limit it counts against."""
        if self.limits is None or method not in _GLOBAL_LIMITED:
            return None
        limits, now = self.limits, time.monotonic()
        checks = [("global", limits.global_interval, limits.global_tolerance)]
        chat_id = _as_int(params.get("chat_id"))
        if method in _CHAT_LIMITED and chat_id is not None:
            checks.append((f"chat:{chat_id}", limits.chat_interval, limits.chat_tolerance))
            if self._chat(chat_id)["type"] in ("group", "supergroup"):
                checks.append((f"group:{chat_id}", limits.group_interval, limits.group_tolerance))
        wait = max(self._tats.get(name, now) - tolerance - now for name, _, tolerance in checks)
        if wait > 0:
            return max(1, math.ceil(wait))
        for name, interval, _ in checks:
            self._tats[name] = max(self._tats.get(name, now), now) + interval
        return None

    @staticmethod
    def _ok(result: Any) -> tuple[int, dict[str, Any]]:
        return 200, {"ok": True, "result": result}

    def _bot_user(self) -> dict[str, Any]:
        bot_id = _as_int(self.token.split(":", 1)[0]) or 123456
        return {
            "id": bot_id,
            "is_bot": True,
            "first_name": "aiconv test bot",
            "username": self.bot_username,
            "can_join_groups": True,
            "can_read_all_group_messages": False,
            "supports_inline_queries": False,
        }

    async def _get_me(self, params: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        return self._ok(self._bot_user())

    async def _set_webhook(self, params: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        url = params.get("url")
        if not isinstance(url, str):
            return 400, self._error(400, "Bad Request: bad webhook: url is empty")
        # Telegram treats an empty url as "remove the webhook".
        self.webhook_url = url or None
        secret = params.get("secret_token")
        self.webhook_secret = secret if isinstance(secret, str) and secret else None
        allowed = params.get("allowed_updates")
        if isinstance(allowed, list):
            self.allowed_updates = [str(a) for a in allowed]
        if params.get("drop_pending_updates") in (True, "true", "True", "1"):
            self._queue.clear()
        return self._ok(True)

    async def _delete_webhook(self, params: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        self.webhook_url = None
        self.webhook_secret = None
        if params.get("drop_pending_updates") in (True, "true", "True", "1"):
            self._queue.clear()
        return self._ok(True)

    def _confirm(self, offset: int | None) -> None:
        if offset is None:
            return
        if offset < 0:
            # Telegram: a negative offset keeps only the last -offset updates.
            del self._queue[: max(0, len(self._queue) + offset)]
        else:
            self._queue = [u for u in self._queue if u.get("update_id", 0) >= offset]

    async def _get_updates(self, params: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        if self.webhook_url is not None:
            return 409, self._error(
                409,
                "Conflict: can't use getUpdates method while webhook is active; "
                "use deleteWebhook to delete the webhook first",
            )
        offset = _as_int(params.get("offset"))
        timeout = max(0, _as_int(params.get("timeout")) or 0)
        limit = min(100, max(1, _as_int(params.get("limit")) or 100))
        allowed = params.get("allowed_updates")
        if isinstance(allowed, list):
            self.allowed_updates = [str(a) for a in allowed]
        self._confirm(offset)
        if not self._queue and timeout > 0 and not self._stopping:
            self.polling += 1
            try:
                async with self._cond:
                    self._cond.notify_all()  # lets tests wait until a poll is pending
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(
                            self._cond.wait_for(
                                lambda: (
                                    bool(self._queue)
                                    or self._stopping
                                    or self.webhook_url is not None
                                )
                            ),
                            timeout,
                        )
            finally:
                self.polling -= 1
        return self._ok(self._queue[:limit])

    def _chat(self, chat_id: int) -> dict[str, Any]:
        chat_type = self._chat_types.get(chat_id, "private" if chat_id > 0 else "supergroup")
        chat: dict[str, Any] = {"id": chat_id, "type": chat_type}
        if chat_type == "private":
            chat["first_name"] = f"User{chat_id}"
        else:
            chat["title"] = f"Chat {chat_id}"
        return chat

    async def _send_message(self, params: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        chat_id = _as_int(params.get("chat_id"))
        if chat_id is None:
            return 400, self._error(400, "Bad Request: chat_id is empty")
        text = params.get("text")
        if (problem := _text_problem(text, params)) is not None:
            return 400, self._error(400, problem)
        assert isinstance(text, str)
        if "reply_parameters" in params:
            problem = reply_parameters_error(params["reply_parameters"])
            if problem is not None:
                return 400, self._error(400, problem)
        message: dict[str, Any] = {
            "message_id": self._take_message_id(),
            "from": self._bot_user(),
            "chat": self._chat(chat_id),
            "date": int(time.time()),
            "text": text,
        }
        if "entities" in params:
            message["entities"] = _json_field(params["entities"])
        if "message_thread_id" in params:
            thread = _as_int(params["message_thread_id"])
            if thread is None:
                return 400, self._error(400, "Bad Request: message thread not found")
            message.update(message_thread_id=thread, is_topic_message=True)
        self.bot_messages[(chat_id, message["message_id"])] = message
        return self._ok(message)

    async def _send_chat_action(self, params: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        if _as_int(params.get("chat_id")) is None:
            return 400, self._error(400, "Bad Request: chat_id is empty")
        if not isinstance(params.get("action"), str):
            return 400, self._error(400, "Bad Request: action is empty")
        return self._ok(True)

    async def _send_message_draft(self, params: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        """Bot API 9.3: private chats only; draft_id non-zero; text 1-4096 characters after
        entities parsing; parse_mode or entities. Recorded in `calls` (see `drafts_of`)."""
        chat_id = _as_int(params.get("chat_id"))
        if chat_id is None:
            return 400, self._error(400, "Bad Request: chat_id is empty")
        if self._chat(chat_id)["type"] != "private":
            return 400, self._error(400, "Bad Request: method is available only in private chats")
        draft = _as_int(params.get("draft_id"))
        if draft is None or draft == 0:
            return 400, self._error(400, "Bad Request: draft_id must be non-zero")
        if (problem := _text_problem(params.get("text"), params)) is not None:
            return 400, self._error(400, problem)
        if "message_thread_id" in params and _as_int(params["message_thread_id"]) is None:
            return 400, self._error(400, "Bad Request: message thread not found")
        return self._ok(True)

    async def _set_my_commands(self, params: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        commands = params.get("commands")
        if not isinstance(commands, list) or len(commands) > 100:
            return 400, self._error(400, "Bad Request: commands must be a list of at most 100")
        menu: list[dict[str, str]] = []
        for item in commands:
            name = item.get("command") if isinstance(item, dict) else None
            description = item.get("description") if isinstance(item, dict) else None
            if not (
                isinstance(name, str)
                and 1 <= len(name) <= 32
                and name == name.lower()
                and name.replace("_", "").isalnum()
                and name.isascii()
            ):
                return 400, self._error(400, "Bad Request: BOT_COMMAND_INVALID")
            if not isinstance(description, str) or not 1 <= len(description) <= 256:
                return 400, self._error(400, "Bad Request: BOT_COMMAND_DESCRIPTION_INVALID")
            menu.append({"command": name, "description": description})
        if params.get("scope") is None and params.get("language_code") is None:
            self.my_commands = menu  # only the default scope is modelled
        return self._ok(True)

    async def _get_my_commands(self, params: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        return self._ok(list(self.my_commands))

    async def _get_chat_member(self, params: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        chat_id, user_id = _as_int(params.get("chat_id")), _as_int(params.get("user_id"))
        if chat_id is None:
            return 400, self._error(400, "Bad Request: chat not found")
        if user_id is None:
            return 400, self._error(400, "Bad Request: invalid user_id specified")
        admins = self.chat_admins.get(chat_id, [])
        if admins and admins[0] == user_id:
            status = "creator"
        elif user_id in admins:
            status = "administrator"
        else:
            status = "member"
        user = {"id": user_id, "is_bot": False, "first_name": f"User{user_id}"}
        return self._ok({"status": status, "user": user})
