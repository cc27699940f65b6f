"""A real streaming replica of the test PostgreSQL server, on this machine, for the replica tests.

``pg_basebackup -R`` clones the test server (127.0.0.1:5432) into a temporary directory with a
physical replication slot of its own, so WAL the replica has not received yet is kept while it is
stopped (other test runs create databases, which checkpoint and would otherwise recycle it). The
clone runs on a free loopback port with a configuration written here (Debian keeps the primary's
postgresql.conf outside its data directory, so the copy has none). The slot is dropped, and the
directory deleted, when the replica is torn down; slots of earlier runs that crashed are dropped
when a new one starts, since a forgotten slot makes the primary keep WAL forever.

PostgreSQL refuses to run as root: as root, every command runs as the ``postgres`` user.
The primary must accept replication connections from loopback (``.ci/run`` adds the pg_hba line).
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import psycopg

SLOT_PREFIX = "aiconv_test_replica_"
START_SECONDS = 60.0  # pg_basebackup of the test server and the first streaming, together
STOP_SECONDS = 30.0
HOT_STANDBY_MINIMUMS = (
    "max_connections",
    "max_worker_processes",
    "max_wal_senders",
    "max_prepared_transactions",
    "max_locks_per_transaction",
)


class ReplicaUnavailable(RuntimeError):
    """The replica cannot be made on this machine; the message says why and what to do."""


def server_binaries(admin_url: str) -> tuple[Path, Path] | None:
    """pg_basebackup and pg_ctl of the primary's major version, or None when not installed."""
    with psycopg.connect(admin_url, autocommit=True) as conn:
        row = conn.execute("SHOW server_version_num").fetchone()
    major = int(row[0]) // 10000 if row else 0
    for folder in (Path(f"/usr/lib/postgresql/{major}/bin"), None):
        found = [
            shutil.which(name, path=str(folder) if folder else None)
            for name in ("pg_basebackup", "pg_ctl")
        ]
        if all(found):
            return Path(str(found[0])), Path(str(found[1]))
    return None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll ``condition`` until it holds; fail naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not after {timeout} s")
        time.sleep(0.1)


class StreamingReplica:
    def __init__(self, admin_url: str, basebackup: Path, pg_ctl: Path) -> None:
        self.admin_url = admin_url
        self.basebackup = basebackup
        self.pg_ctl = pg_ctl
        self.slot = f"{SLOT_PREFIX}{uuid.uuid4().hex[:10]}"
        self.port = free_port()
        self.home = Path(tempfile.mkdtemp(prefix="aiconv-replica-"))
        self.data = self.home / "data"
        self.log = self.home / "postgres.log"
        self._owner = _postgres_user() if os.geteuid() == 0 else None
        if self._owner is not None:
            os.chown(self.home, self._owner.pw_uid, self._owner.pw_gid)

    def url(self, database: str) -> str:
        """The URL of ``database`` on the replica (same name as on the primary)."""
        return (
            urlsplit(self.admin_url)
            ._replace(
                netloc=f"{urlsplit(self.admin_url).username or 'postgres'}@127.0.0.1:{self.port}",
                path=f"/{database}",
            )
            .geturl()
        )

    def create(self) -> None:
        """Clone the primary, configure the clone, start it and wait until it streams."""
        self._drop_stale_slots()
        primary = urlsplit(self.admin_url)
        self._run(
            [
                str(self.basebackup),
                "--host", primary.hostname or "127.0.0.1",
                "--port", str(primary.port or 5432),
                "--username", primary.username or "postgres",
                "--pgdata", str(self.data),
                "--write-recovery-conf",
                "--create-slot", "--slot", self.slot,
                "--wal-method", "stream",
                "--checkpoint", "fast",
                "--no-sync",
            ],
            START_SECONDS,
            hint="does the primary's pg_hba.conf allow replication from 127.0.0.1? "
            "(.ci/run adds: host replication all 127.0.0.1/32 trust)",
        )  # fmt: skip
        (self.data / "postgresql.conf").write_text(
            f"""listen_addresses = '127.0.0.1'
port = {self.port}
unix_socket_directories = '{self.home}'
hot_standby = on
{self._primary_minimums()}shared_buffers = 32MB
fsync = off
wal_receiver_status_interval = 1s
logging_collector = off
"""
        )
        (self.data / "pg_hba.conf").write_text(
            "local all all trust\nhost all all 127.0.0.1/32 trust\n"
        )
        (self.data / "pg_ident.conf").write_text("")
        self.start()

    def start(self) -> None:
        self._run(
            [str(self.pg_ctl), "--pgdata", str(self.data), "--log", str(self.log), "--wait",
             "--timeout", str(int(START_SECONDS)), "start"],
            START_SECONDS + 5,
        )  # fmt: skip
        wait_for(self.streaming, START_SECONDS, "the replica streams from the primary")

    def stop(self, mode: str = "fast") -> None:
        self._run(
            [str(self.pg_ctl), "--pgdata", str(self.data), "--mode", mode, "--wait",
             "--timeout", str(int(STOP_SECONDS)), "stop"],
            STOP_SECONDS + 5,
        )  # fmt: skip

    def destroy(self) -> None:
        """Stop the replica (if running), drop its slot, delete its files."""
        try:
            if (self.data / "postmaster.pid").exists():
                self.stop("immediate")
        finally:
            # The primary notices the stopped replica's disconnection a moment later; an active
            # slot cannot be dropped.
            wait_for(self._slot_dropped, STOP_SECONDS, f"replication slot {self.slot} dropped")
            shutil.rmtree(self.home, ignore_errors=True)

    def _slot_dropped(self) -> bool:
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            conn.execute(
                "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots "
                "WHERE slot_name = %s AND NOT active",
                (self.slot,),
            )
            row = conn.execute(
                "SELECT count(*) FROM pg_replication_slots WHERE slot_name = %s", (self.slot,)
            ).fetchone()
        return row is not None and row[0] == 0

    def streaming(self) -> bool:
        """The replica accepts connections, is in recovery and its WAL receiver is running."""
        try:
            with psycopg.connect(self.url("postgres"), connect_timeout=2) as conn:
                row = conn.execute(
                    "SELECT pg_is_in_recovery() AND EXISTS (SELECT 1 FROM pg_stat_wal_receiver)"
                ).fetchone()
        except psycopg.OperationalError:
            return False
        return bool(row and row[0])

    def has_database(self, name: str) -> bool:
        try:
            with psycopg.connect(self.url(name), connect_timeout=2):
                return True
        except psycopg.OperationalError:
            return False

    def execute(self, database: str, statement: str) -> Any:
        """Run one statement on the replica and return its first column of its first row."""
        with psycopg.connect(self.url(database), autocommit=True, connect_timeout=5) as conn:
            row = conn.execute(statement).fetchone()
        return row[0] if row else None

    def _primary_minimums(self) -> str:
        """A hot standby refuses to run with less of these than its primary has."""
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            rows = conn.execute(
                "SELECT name, setting FROM pg_settings WHERE name = ANY(%s)",
                (list(HOT_STANDBY_MINIMUMS),),
            ).fetchall()
        return "".join(f"{name} = {setting}\n" for name, setting in rows)

    def _drop_stale_slots(self) -> None:
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            conn.execute(
                "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots "
                "WHERE slot_name LIKE %s AND NOT active",
                (SLOT_PREFIX + "%",),
            )

    def _run(self, command: list[str], timeout: float, hint: str = "") -> None:
        owner = self._owner
        result = subprocess.run(
            command,
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=self.home,
            user=owner.pw_uid if owner else None,
            group=owner.pw_gid if owner else None,
            extra_groups=[] if owner else None,
            check=False,
        )
        if result.returncode != 0:
            log = self.log.read_text()[-2000:] if self.log.exists() else ""
            raise ReplicaUnavailable(
                f"{Path(command[0]).name} failed ({result.returncode}): "
                f"{result.stderr.strip()[-2000:]} {log} {hint}".strip()
            )


def _postgres_user() -> pwd.struct_passwd:
    try:
        return pwd.getpwnam("postgres")
    except KeyError:
        raise ReplicaUnavailable("running as root, but there is no postgres user") from None
