"""nginx/nginx.conf under Debian's real nginx.

The configuration is rendered into a temporary prefix: the upstream `web:8000` becomes a local
app on loopback, the certificate paths point at a throwaway self-signed certificate made by
openssl, and the listen ports become free high ports on 127.0.0.1. Everything else (TLS settings,
routing, body limit, proxy headers) is the file that ships.
"""

from __future__ import annotations

import json
import os
import re
import signal
import ssl
import subprocess
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from aiconv.jobs.client import RedisClient
from aiconv.jobs.keys import Keys
from aiconv.testing.botapi import BotApiDouble
from tests.support.http_stub import QuietHandler, serving
from tests.support.processes import AiconvProcess, base_env
from tests.support.streams import stream_entries

from ._support import NGINX_DIR, free_port, require_tool, server_process

SECRET = "test-webhook-secret_123"


@dataclass
class Rendered:
    prefix: Path
    conf: Path
    http_port: int
    https_port: int


def make_cert(openssl: str, directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [
            openssl,
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-sha256",
            "-nodes",
            "-days",
            "2",
            "-keyout",
            str(directory / "tls.key"),
            "-out",
            str(directory / "tls.crt"),
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=DNS:localhost,IP:127.0.0.1",
        ],
        check=True,
        capture_output=True,
        timeout=30,
    )


def render(prefix: Path, upstream_port: int, webhook_sources: str = "any") -> Rendered:
    """Rewrite only what must differ on this machine: upstream, cert paths, ports, files.
    `webhook_sources` picks the file compose mounts for WEBHOOK_SOURCES (any, telegram)."""
    text = (NGINX_DIR / "nginx.conf").read_text()
    http_port, https_port = free_port(), free_port()
    sources = NGINX_DIR / f"webhook-from-{webhook_sources}.conf"
    assert sources.is_file(), sources
    replacements = {
        "server web:8000;": f"server 127.0.0.1:{upstream_port};",
        "/etc/nginx/certs/": f"{prefix}/certs/",
        "/etc/nginx/webhook-from.conf": str(sources),
        "listen 80 default_server;": f"listen 127.0.0.1:{http_port} default_server;",
        "listen [::]:80 default_server;": "",
        "listen 443 ssl http2 default_server;": (
            f"listen 127.0.0.1:{https_port} ssl http2 default_server;"
        ),
        "listen [::]:443 ssl http2 default_server;": "",
        "worker_processes auto;": "worker_processes 1;",
        "access_log /dev/stdout main;": f"access_log {prefix}/access.log main;",
        "error_log /dev/stderr warn;": f"error_log {prefix}/error.log warn;",
        "http {": (
            "http {\n"
            f"    client_body_temp_path {prefix}/tmp/body;\n"
            f"    proxy_temp_path {prefix}/tmp/proxy;\n"
            f"    fastcgi_temp_path {prefix}/tmp/fastcgi;\n"
            f"    uwsgi_temp_path {prefix}/tmp/uwsgi;\n"
            f"    scgi_temp_path {prefix}/tmp/scgi;\n"
        ),
    }
    for old, new in replacements.items():
        assert old in text, f"nginx.conf no longer contains {old!r}; update the test's renderer"
        text = text.replace(old, new)
    (prefix / "tmp").mkdir(parents=True, exist_ok=True)
    conf = prefix / "nginx.conf"
    conf.write_text(text)
    return Rendered(prefix, conf, http_port, https_port)


def nginx_args(nginx: str, r: Rendered) -> list[str]:
    globals_ = f"pid {r.prefix}/nginx.pid;"
    if os.geteuid() == 0:  # run the workers as the current user too
        globals_ += " user root;"
    return [
        nginx,
        "-p",
        str(r.prefix),
        "-c",
        str(r.conf),
        "-e",
        str(r.prefix / "error.log"),
        "-g",
        globals_,
    ]


@pytest.fixture(scope="module")
def tools() -> tuple[str, str]:
    return require_tool("nginx", "/usr/sbin"), require_tool("openssl")


@pytest.mark.parametrize("webhook_sources", ["any", "telegram"])
def test_nginx_t_accepts_the_configuration(
    tools: tuple[str, str], tmp_path: Path, webhook_sources: str
) -> None:
    nginx, openssl = tools
    make_cert(openssl, tmp_path / "certs")
    rendered = render(tmp_path, free_port(), webhook_sources)
    result = subprocess.run(
        [*nginx_args(nginx, rendered), "-t"], capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0, result.stderr
    assert "test is successful" in result.stderr


# --- the live proxy test ----------------------------------------------------------------------


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Upstream:
    """A stand-in for `aiconv web` on loopback that records what reaches it."""

    port: int
    seen: list[Seen] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def paths(self) -> list[str]:
        with self.lock:
            return [s.path for s in self.seen]


@pytest.fixture
def upstream() -> Iterator[Upstream]:
    state = Upstream(port=0)

    class Handler(QuietHandler):
        protocol_version = "HTTP/1.1"

        def _handle(self) -> None:
            body = self.read_body()
            with state.lock:
                state.seen.append(
                    Seen(
                        self.command,
                        self.path,
                        {k.lower(): v for k, v in self.headers.items()},
                        body,
                    )
                )
            self.answer_json({"ok": True})

        do_GET = do_POST = _handle

    with serving(Handler) as port:
        state.port = port
        yield state


@contextmanager
def running_nginx(
    tools: tuple[str, str], folder: Path, upstream_port: int, webhook_sources: str = "any"
) -> Iterator[Rendered]:
    """The shipped configuration, served by Debian's nginx in front of a loopback port."""
    nginx, openssl = tools
    make_cert(openssl, folder / "certs")
    rendered = render(folder, upstream_port, webhook_sources)

    def answers() -> bool:
        try:
            httpx.get(f"http://127.0.0.1:{rendered.http_port}/nginx-health", timeout=1)
        except httpx.TransportError:
            return False
        return True

    argv = [*nginx_args(nginx, rendered), "-g", "daemon off;"]
    # SIGQUIT: nginx's graceful shutdown.
    with server_process(argv, answers, within=15, stop_signal=signal.SIGQUIT):
        yield rendered


@pytest.fixture
def proxy(tools: tuple[str, str], tmp_path: Path, upstream: Upstream) -> Iterator[Rendered]:
    with running_nginx(tools, tmp_path, upstream.port) as rendered:
        yield rendered


def client(base: str) -> httpx.Client:
    return httpx.Client(base_url=base, verify=False, timeout=10)


def test_webhook_reaches_the_app_over_tls_with_its_secret(
    proxy: Rendered, upstream: Upstream
) -> None:
    update = {
        "update_id": 1,
        "message": {"message_id": 1, "date": 0, "text": "hi", "chat": {"id": 7, "type": "private"}},
    }
    with client(f"https://127.0.0.1:{proxy.https_port}") as c:
        response = c.post(
            "/webhook", json=update, headers={"X-Telegram-Bot-Api-Secret-Token": SECRET}
        )
    assert response.status_code == 200
    assert "max-age=63072000" in response.headers["strict-transport-security"]
    [seen] = upstream.seen
    assert (seen.method, seen.path) == ("POST", "/webhook")
    assert seen.headers["x-telegram-bot-api-secret-token"] == SECRET
    assert seen.headers["x-forwarded-proto"] == "https"
    assert seen.headers["x-forwarded-for"] == "127.0.0.1"
    assert seen.headers["x-real-ip"] == "127.0.0.1"
    assert json.loads(seen.body) == update


def test_only_public_routes_are_reachable(proxy: Rendered, upstream: Upstream) -> None:
    with client(f"https://127.0.0.1:{proxy.https_port}") as c:
        assert c.get("/health").status_code == 200
        assert c.post("/v1/chat/completions", json={"model": "x"}).status_code == 200
        assert c.get("/admin/dlq").status_code == 403
        assert c.get("/admin").status_code == 403
        for path in ("/metrics", "/ready", "/", "/webhookx", "/docs"):
            assert c.get(path).status_code == 404, path
        assert c.get("/webhook").status_code == 403  # only POST
    assert upstream.paths() == ["/health", "/v1/chat/completions"]


def test_oversized_body_is_refused_at_the_edge(proxy: Rendered, upstream: Upstream) -> None:
    with client(f"https://127.0.0.1:{proxy.https_port}") as c:
        response = c.post(
            "/webhook",
            content=b"x" * (1024 * 1024 + 1),
            headers={"X-Telegram-Bot-Api-Secret-Token": SECRET},
        )
    assert response.status_code == 413
    assert upstream.seen == []


def test_http_redirects_to_https(proxy: Rendered, upstream: Upstream) -> None:
    response = httpx.post(
        f"http://127.0.0.1:{proxy.http_port}/webhook",
        content=b"{}",
        timeout=10,
        follow_redirects=False,
    )
    assert response.status_code == 301
    assert response.headers["location"].startswith("https://127.0.0.1")
    assert response.headers["location"].endswith("/webhook")
    assert upstream.seen == []


def _handshake(port: int, context: ssl.SSLContext) -> str | None:
    import socket

    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        return tls.version()


def test_tls_follows_mozilla_intermediate(proxy: Rendered) -> None:
    def ctx() -> ssl.SSLContext:
        c = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        c.check_hostname = False
        c.verify_mode = ssl.CERT_NONE
        return c

    assert _handshake(proxy.https_port, ctx()) == "TLSv1.3"

    tls12 = ctx()
    tls12.maximum_version = ssl.TLSVersion.TLSv1_2
    tls12.set_ciphers("ECDHE-RSA-AES128-GCM-SHA256")
    assert _handshake(proxy.https_port, tls12) == "TLSv1.2"

    # Static-RSA key exchange and CBC suites are not in the intermediate profile.
    weak = ctx()
    weak.maximum_version = ssl.TLSVersion.TLSv1_2
    weak.set_ciphers("AES128-SHA256:AES256-SHA")
    with pytest.raises(ssl.SSLError):
        _handshake(proxy.https_port, weak)


async def test_a_webhook_through_nginx_reaches_aiconv_web(
    tools: tuple[str, str],
    tmp_path: Path,
    database_url: str,
    redis_prefix: str,
    redis: RedisClient,
    keys: Keys,
) -> None:
    """The real `aiconv web` behind the shipped nginx: the update lands on the Redis stream."""
    async with BotApiDouble() as double:
        port = free_port()
        env = base_env(database_url, redis_prefix, double.url, double.token)
        env.update(
            PORT=str(port),
            TELEGRAM_WEBHOOK_URL="https://bot.example/webhook",
            TELEGRAM_WEBHOOK_SECRET=SECRET,
        )
        web = AiconvProcess(env, "web", tmp_path / "web.log")
        await web.start()
        try:
            with running_nginx(tools, tmp_path / "nginx", port) as rendered:
                update = double.make_update(4242, "hello through nginx")
                async with httpx.AsyncClient(verify=False, timeout=10) as http:
                    response = await http.post(
                        f"https://127.0.0.1:{rendered.https_port}/webhook",
                        json=update,
                        headers={"X-Telegram-Bot-Api-Secret-Token": SECRET},
                    )
                    refused = await http.post(
                        f"https://127.0.0.1:{rendered.https_port}/webhook", json=update
                    )
        finally:
            web.stop()
    assert response.status_code == 200
    assert refused.status_code == 401  # aiconv's own secret check, behind nginx
    entries = [e for s in keys.stage_streams("updates") for e in await stream_entries(redis, s)]
    [(_, fields)] = entries
    assert json.loads(fields["job"])["update"] == update


def test_v1_bounds_open_connections_per_client() -> None:
    # Issue 13, item 1: a key holder could hold hundreds of /v1 requests open at 20 r/s.
    text = (NGINX_DIR / "nginx.conf").read_text()
    assert re.search(r"limit_conn_zone \$binary_remote_addr zone=api_conn:\d+m;", text)
    v1 = text[text.index("location /v1/ {") :]
    v1 = v1[: v1.index("}")]
    match = re.search(r"limit_conn api_conn (\d+);", v1)
    assert match and 1 <= int(match[1]) <= 32
    assert "limit_conn_status 429;" in text


def v1_connection_limit() -> int:
    """N of `limit_conn api_conn N;` in the /v1 location of the shipped file."""
    text = (NGINX_DIR / "nginx.conf").read_text()
    v1 = text[text.index("location /v1/ {") :]
    match = re.search(r"limit_conn api_conn (\d+);", v1[: v1.index("}")])
    assert match, "no limit_conn in location /v1/"
    return int(match[1])


@dataclass
class HoldingUpstream:
    """A stand-in for `aiconv web` that holds every /v1 request open until `release` is set,
    as a generation nobody answers would; other paths are answered at once."""

    port: int
    held: int = 0
    answered: list[str] = field(default_factory=list)
    release: threading.Event = field(default_factory=threading.Event)
    changed: threading.Condition = field(default_factory=threading.Condition)

    def wait_held(self, count: int, timeout: float) -> None:
        with self.changed:
            if not self.changed.wait_for(lambda: self.held >= count, timeout):
                raise AssertionError(f"{self.held} /v1 requests reached the app, not {count}")


@pytest.fixture
def holding() -> Iterator[HoldingUpstream]:
    state = HoldingUpstream(port=0)

    class Handler(QuietHandler):
        protocol_version = "HTTP/1.1"

        def _handle(self) -> None:
            self.read_body()
            if self.path.startswith("/v1/"):
                with state.changed:
                    state.held += 1
                    state.changed.notify_all()
                state.release.wait(60)
            with state.changed:
                state.answered.append(self.path)
            self.answer_json({})

        do_GET = do_POST = _handle

    with serving(Handler) as port:
        state.port = port
        try:
            yield state
        finally:
            state.release.set()  # before the server shuts down: no request is left held


def test_v1_connections_beyond_the_limit_are_refused_and_the_webhook_still_answers(
    tools: tuple[str, str], tmp_path: Path, holding: HoldingUpstream
) -> None:
    """Issue 13, item 1, live: one client holds N /v1 requests open (no answer yet); its
    (N+1)-th is refused at the edge without reaching the app, while /webhook is unaffected."""
    limit = v1_connection_limit()
    with running_nginx(tools, tmp_path, holding.port) as rendered:
        base = f"https://127.0.0.1:{rendered.https_port}"

        def held_request() -> int:
            # One connection each (HTTP/1.1), so each counts once against limit_conn.
            with httpx.Client(base_url=base, verify=False, timeout=90) as c:
                return c.post("/v1/chat/completions", json={"model": "x"}).status_code

        with ThreadPoolExecutor(max_workers=limit) as pool:
            pending = [pool.submit(held_request) for _ in range(limit)]
            try:
                holding.wait_held(limit, timeout=60)
                with client(base) as c:
                    beyond = c.post("/v1/chat/completions", json={"model": "x"})
                    webhook = c.post(
                        "/webhook",
                        json={"update_id": 1},
                        headers={"X-Telegram-Bot-Api-Secret-Token": SECRET},
                    )
                    health = c.get("/health")
            finally:
                holding.release.set()
            held = [future.result(timeout=90) for future in pending]
        with client(base) as c:  # the slots are free again once the requests ended
            after = c.post("/v1/chat/completions", json={"model": "x"})
    assert beyond.status_code in (429, 503), beyond.status_code
    assert (webhook.status_code, health.status_code) == (200, 200)
    assert held == [200] * limit
    assert after.status_code == 200
    assert holding.held == limit + 1  # the N held ones and `after`; never the refused one
    assert sorted(set(holding.answered)) == ["/health", "/v1/chat/completions", "/webhook"]


def test_webhook_limited_to_telegram_refuses_other_sources(
    tools: tuple[str, str], tmp_path: Path, upstream: Upstream
) -> None:
    """WEBHOOK_SOURCES=telegram: a POST from anywhere else (here loopback; no real-IP header
    is trusted) gets 403 at the edge, and only /webhook is restricted."""
    with (
        running_nginx(tools, tmp_path, upstream.port, webhook_sources="telegram") as rendered,
        client(f"https://127.0.0.1:{rendered.https_port}") as c,
    ):
        refused = c.post(
            "/webhook",
            json={"update_id": 1},
            headers={
                "X-Telegram-Bot-Api-Secret-Token": SECRET,
                "X-Forwarded-For": "149.154.167.99",  # a claim, not the peer: ignored
                "X-Real-IP": "149.154.167.99",
            },
        )
        assert c.get("/health").status_code == 200
        assert c.post("/v1/chat/completions", json={"model": "x"}).status_code == 200
    assert refused.status_code == 403
    assert upstream.paths() == ["/health", "/v1/chat/completions"]


def test_telegram_sources_are_the_published_webhook_networks() -> None:
    rules = [
        line.strip()
        for line in (NGINX_DIR / "webhook-from-telegram.conf").read_text().splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    assert rules == ["allow 149.154.160.0/20;", "allow 91.108.4.0/22;", "deny all;"]
    text = (NGINX_DIR / "nginx.conf").read_text()
    webhook = text[text.index("location = /webhook {") :]
    assert "include /etc/nginx/webhook-from.conf;" in webhook[: webhook.index("}")]
    assert "set_real_ip_from" not in text and "real_ip_header" not in text
