"""Load test: valid Telegram webhook traffic, with the secret, at a deployment.

    export TELEGRAM_WEBHOOK_SECRET=...          # the deployment's secret
    just load https://bot.example.org 50 5 2m   # or:
    locust -f tests/load/locustfile.py --host https://bot.example.org

Each simulated user is one Telegram chat sending text messages (and now and then a command)
with increasing update_ids, as Telegram would. Every request must be accepted (2xx); a 401/403
means the secret is wrong, a 413/400 a malformed update, 503 Redis unavailable. Set
LOAD_VERIFY_TLS=0 for a self-signed certificate, LOAD_PATH for another webhook path.
Runs only against hosts you operate (the traffic creates real conversations and model work).
"""

from __future__ import annotations

import itertools
import os
import random
import time
from typing import Any

from locust import FastHttpUser, between, task

SECRET = os.environ.get("TELEGRAM_WEBHOOK_SECRET", "")
WEBHOOK_PATH = os.environ.get("LOAD_PATH", "/webhook")
VERIFY_TLS = os.environ.get("LOAD_VERIFY_TLS", "1") not in {"0", "false", "no"}

# update_id and chat id spaces far above real Telegram ids, so load-test rows are recognisable.
_update_ids = itertools.count(9_000_000_000 + int(time.time()) % 1_000_000 * 1000)
_chat_ids = itertools.count(8_000_000_000)

TEXTS = (
    "hi!",
    "how was your day?",
    "tell me something interesting about octopuses",
    "what should I cook tonight?",
    "I can't sleep",
    "do you like music?",
)


def text_update(chat_id: int, message_id: int, text: str) -> dict[str, Any]:
    """A Bot API Update carrying a private text message (the fields aiconv reads)."""
    user = {
        "id": chat_id,
        "is_bot": False,
        "first_name": "Load",
        "username": f"load{chat_id}",
        "language_code": "en",
    }
    message: dict[str, Any] = {
        "message_id": message_id,
        "date": int(time.time()),
        "chat": {"id": chat_id, "type": "private", "first_name": "Load"},
        "from": user,
        "text": text,
    }
    if text.startswith("/"):
        message["entities"] = [{"type": "bot_command", "offset": 0, "length": len(text.split()[0])}]
    return {"update_id": next(_update_ids), "message": message}


class TelegramChat(FastHttpUser):
    wait_time = between(2, 8)  # people do not type continuously
    insecure = not VERIFY_TLS

    def on_start(self) -> None:
        if not SECRET:
            raise RuntimeError("set TELEGRAM_WEBHOOK_SECRET to the deployment's webhook secret")
        self.chat_id = next(_chat_ids)
        self.message_ids = itertools.count(1)
        self._send("/start")

    def _send(self, text: str) -> None:
        update = text_update(self.chat_id, next(self.message_ids), text)
        with self.client.post(
            WEBHOOK_PATH,
            json=update,
            name="POST /webhook",
            headers={"X-Telegram-Bot-Api-Secret-Token": SECRET},
            catch_response=True,
        ) as response:
            if not 200 <= response.status_code < 300:
                response.failure(f"HTTP {response.status_code}")

    @task(10)
    def message(self) -> None:
        self._send(random.choice(TEXTS))

    @task(1)
    def command(self) -> None:
        self._send(random.choice(("/help", "/persona", "/reset")))
