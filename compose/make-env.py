#!/usr/bin/env python3
"""Write compose/.env on the first start, so `just up` needs no editing.

    python3 compose/make-env.py            (`just up` runs it; `just env` runs only this)

First run (no compose/.env yet): copies compose/.env.example, the template and its
documentation, replacing every `change-me` placeholder with a fresh random secret (64 hex
characters: 256 bits, passes the production checks of aiconv.config; ENCRYPTION_KEY is 32 random
bytes in hex), asks for TELEGRAM_BOT_TOKEN (or takes it from the environment) and writes the file
with mode 0600. TELEGRAM_WEBHOOK_URL comes from the environment too; without it the bot long-polls
and needs no public HTTPS.

Later runs: the file is used as it is and never rewritten, so no secret ever changes under data
made with it (the PostgreSQL password is fixed when the volume is created; the encryption key
reads the stored messages).

Standard library only, Python 3.8 or newer: it runs on a bare Docker host before any virtual
environment exists.
"""

from __future__ import annotations

import argparse
import getpass
import os
import re
import secrets
import shutil
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

HERE = Path(__file__).resolve().parent
PLACEHOLDER = "change-me"
# Telegram's bot tokens: the bot's numeric id, a colon, then 35 characters of A-Z a-z 0-9 _ -
TOKEN_RE = re.compile(r"[0-9]+:[A-Za-z0-9_-]{30,}")
# The named volume of the database (compose.yaml's project name "aiconv" + volume "pgdata").
PGDATA_VOLUME = "aiconv_pgdata"
MAKE_SECRET = "python3 -c 'import secrets; print(secrets.token_hex(32))'"


class Refused(Exception):
    """The file cannot be written (or used); the message is the one line the operator sees."""


def new_secret(name: str) -> str:
    """A random value for the variable `name`: 32 random bytes written as 64 hex characters.

    Hex fits every place a secret goes: Telegram's secret_token alphabet, URLs (the database and
    Redis passwords), redis-server's command line, and compose's .env syntax (no `$`, `#`,
    quotes or spaces). ENCRYPTION_KEY is read as 32 raw bytes, the others as 64 characters.
    """
    del name  # every secret has the same shape today; the name is there for a future one
    return secrets.token_hex(32)


def is_placeholder(value: str) -> bool:
    return PLACEHOLDER in value.lower()


def read_values(text: str) -> dict[str, str]:
    """KEY=VALUE lines of a compose .env file (comments and blank lines skipped)."""
    values = {}
    for line in text.splitlines():
        if line.strip() and not line.lstrip().startswith("#") and "=" in line:
            key, _, value = line.partition("=")
            values[key.strip()] = value.strip()
    return values


def check_token(token: str) -> str:
    token = token.strip()
    if not TOKEN_RE.fullmatch(token):
        raise Refused(
            "TELEGRAM_BOT_TOKEN does not look like a bot token (123456789:AA… from @BotFather)"
        )
    return token


def check_webhook_url(url: str) -> str:
    url = url.strip()
    if not url:
        return ""
    parts = urlsplit(url)
    if parts.scheme != "https" or not parts.hostname or re.search(r"[\s$#'\"\\]", url):
        raise Refused(
            "TELEGRAM_WEBHOOK_URL must be the public https://HOST/webhook of this box "
            "(or empty for long polling)"
        )
    return url


def ask_token(environ: dict[str, str], interactive: bool) -> str:
    """TELEGRAM_BOT_TOKEN from the environment, else asked on the terminal (3 tries)."""
    given = environ.get("TELEGRAM_BOT_TOKEN", "").strip()
    if given:
        return check_token(given)
    if not interactive:
        raise Refused(
            "TELEGRAM_BOT_TOKEN is not set: run `TELEGRAM_BOT_TOKEN=<token from @BotFather> "
            "just up` (or run it on a terminal to be asked)"
        )
    print("First start: writing compose/.env with new random secrets.", file=sys.stderr)
    for attempt in range(3):
        try:
            answer = getpass.getpass("TELEGRAM_BOT_TOKEN (from @BotFather, not shown): ")
        except EOFError:
            break
        try:
            return check_token(answer)
        except Refused as error:
            if attempt == 2:
                raise
            print(f"  {error}", file=sys.stderr)
    raise Refused("TELEGRAM_BOT_TOKEN is needed (from @BotFather); nothing was written")


def render(template: str, token: str, webhook_url: str) -> tuple[str, list[str]]:
    """The template with the token, the webhook URL and a random secret for every placeholder;
    also the names of the secrets generated. Comments and every other value are kept."""
    generated = []
    lines = []
    for line in template.splitlines():
        if line.strip() and not line.lstrip().startswith("#") and "=" in line:
            key, _, value = line.partition("=")
            name = key.strip()
            if name == "TELEGRAM_BOT_TOKEN":
                value = token
            elif name == "TELEGRAM_WEBHOOK_URL":
                value = webhook_url
            elif name == "TLS_DOMAIN" and webhook_url:
                value = urlsplit(webhook_url).hostname or value
            elif is_placeholder(value):
                value = new_secret(name)
                generated.append(name)
            line = f"{key}={value}"
        lines.append(line)
    stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    header = [
        f"# Written by compose/make-env.py on {stamp} from compose/.env.example, with random",
        "# secrets. Later starts use this file as it is: edit it freely, but keep a copy (the",
        "# database volume only opens with this DB_PASSWORD, stored messages only with this",
        "# ENCRYPTION_KEY, backups included).",
        "",
    ]
    return "\n".join(header + lines) + "\n", generated


def write_new(path: Path, text: str) -> None:
    """Create `path` (mode 0600) with `text`, atomically; an existing file is never replaced."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(descriptor, "w", encoding="utf-8") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        try:
            os.link(temporary, path)  # fails if `path` exists, unlike a rename
        except FileExistsError:
            raise Refused(f"{path} appeared meanwhile; it was left as it is") from None
    finally:
        temporary.unlink(missing_ok=True)


def old_database_volume(environ: dict[str, str]) -> bool:
    """Whether Docker already holds this stack's database volume (made with another .env)."""
    docker = shutil.which("docker", path=environ.get("PATH"))
    if docker is None:
        return False
    try:
        found = subprocess.run(
            [docker, "volume", "inspect", PGDATA_VOLUME],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=30,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return False
    return found.returncode == 0


def check_existing(path: Path, environ: dict[str, str]) -> list[str]:
    """The variables of an existing file that stop a production start (placeholders left, no
    bot token); the file itself is not changed."""
    values = read_values(path.read_text(encoding="utf-8"))
    problems = [n for n, v in values.items() if is_placeholder(v) and n != "TELEGRAM_BOT_TOKEN"]
    # compose takes TELEGRAM_BOT_TOKEN from the shell first, then from the file
    token = environ.get("TELEGRAM_BOT_TOKEN") or values.get("TELEGRAM_BOT_TOKEN", "")
    if not token.strip() or is_placeholder(token):
        problems.append("TELEGRAM_BOT_TOKEN")
    return problems


def main(
    argv: list[str] | None = None,
    environ: dict[str, str] | None = None,
    interactive: bool | None = None,
) -> int:
    """Exit status 0: compose/.env is there (written now or before); 2: refused, one line said
    why on stderr and nothing was written."""
    parser = argparse.ArgumentParser(
        description="Write compose/.env with random secrets on the first start; keep it after."
    )
    parser.add_argument("--template", type=Path, default=HERE / ".env.example")
    parser.add_argument("--output", type=Path, default=HERE / ".env")
    args = parser.parse_args(argv)
    env = dict(os.environ if environ is None else environ)
    shown = os.path.relpath(args.output)  # compose/.env, as run from the repository root
    if shown.startswith(".."):
        shown = str(args.output)
    try:
        if args.output.exists():
            problems = check_existing(args.output, env)
            environment = read_values(args.output.read_text(encoding="utf-8")).get(
                "ENVIRONMENT", ""
            )
            if problems and environment.lower() in ("", "production", "prod"):
                raise Refused(
                    f"set {', '.join(problems)} (placeholder or empty) in this file; "
                    f"make a secret with {MAKE_SECRET}"
                )
            return 0
        if old_database_volume(env):
            raise Refused(
                f"is missing but Docker holds the database volume {PGDATA_VOLUME}, made with "
                "the DB_PASSWORD and ENCRYPTION_KEY of an earlier compose/.env: put that file "
                "back (or delete the old data: docker compose -f compose/compose.yaml down -v)"
            )
        webhook_url = check_webhook_url(env.get("TELEGRAM_WEBHOOK_URL", ""))  # before asking
        token = ask_token(env, sys.stdin.isatty() if interactive is None else interactive)
        text, generated = render(args.template.read_text(encoding="utf-8"), token, webhook_url)
        write_new(args.output, text)
    except Refused as error:
        print(f"{shown}: {error}", file=sys.stderr)
        return 2
    mode = f"webhook {webhook_url}" if webhook_url else "long polling (TELEGRAM_WEBHOOK_URL empty)"
    print(
        f"wrote {shown}: random {', '.join(generated)}; {mode}. Keep a copy of it.",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
