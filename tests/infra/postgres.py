"""A real PostgreSQL server (Debian's ``postgresql`` package) on a loopback port for tests.

The server runs from a fresh data directory in a temporary folder, with ``fsync`` off and trust
authentication on 127.0.0.1 only. PostgreSQL refuses to run as root (CI runs as root): then the
data directory belongs to, and the server runs as, the unprivileged ``postgres`` user that the
Debian package creates (or ``TIERGUARD_PG_USER``).
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

from tierguard.localenv.ports import free_port


class MissingPostgres(RuntimeError):
    pass


def postgres_bin_dir() -> Path:
    env = os.environ.get("TIERGUARD_PG_BIN")
    candidates = [env] if env else sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True)
    for c in candidates:
        if c and (Path(c) / "initdb").is_file() and (Path(c) / "postgres").is_file():
            return Path(c)
    raise MissingPostgres(
        "PostgreSQL server binaries not found (expected /usr/lib/postgresql/VERSION/bin from Debian's "
        "'postgresql' package; run .ci/install.sh or set TIERGUARD_PG_BIN)"
    )


class PostgresServer:
    def __init__(self) -> None:
        self.bin = postgres_bin_dir()
        self.tmp = Path(tempfile.mkdtemp(prefix="tierguard-pg-"))
        self.data = self.tmp / "data"
        self.log_path = self.tmp / "postgres.log"
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self.user: str | None = None
        if os.geteuid() == 0:
            self.user = os.environ.get("TIERGUARD_PG_USER", "postgres")
            try:
                pw = pwd.getpwnam(self.user)
            except KeyError:
                raise MissingPostgres(f"running as root and there is no user {self.user!r} to run PostgreSQL as") from None
            os.chmod(self.tmp, 0o755)
            os.chown(self.tmp, pw.pw_uid, pw.pw_gid)

    def _run_as(self) -> dict[str, object]:
        return {"user": self.user} if self.user else {}

    def start(self) -> PostgresServer:
        subprocess.run(
            [str(self.bin / "initdb"), "-D", str(self.data), "-A", "trust", "-U", "tierguard", "-E", "UTF8",
             "--no-sync", "--no-instructions"],
            check=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, **self._run_as(),  # type: ignore[arg-type]
        )
        for _ in range(3):
            self.port = free_port()
            if self._launch():
                return self
            self.stop(keep=True)
        raise RuntimeError(f"PostgreSQL did not start:\n{self.log_text()}")

    def restart(self) -> None:
        """Start the stopped server again on the same port and data."""
        if not self._launch():
            raise RuntimeError(f"PostgreSQL did not restart:\n{self.log_text()}")

    def _launch(self) -> bool:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [str(self.bin / "postgres"), "-D", str(self.data), "-p", str(self.port), "-h", "127.0.0.1",
                 "-k", str(self.tmp), "-F", "-c", "max_connections=50", "-c", "shared_buffers=16MB"],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, **self._run_as(),  # type: ignore[arg-type]
            )
        return self._wait_ready()

    def _wait_ready(self, timeout: float = 30.0) -> bool:
        import psycopg

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is None or self.proc.poll() is not None:
                return False
            try:
                psycopg.connect(self.url("postgres"), connect_timeout=2).close()
                return True
            except psycopg.OperationalError:
                time.sleep(0.1)
        return False

    def url(self, db: str = "postgres") -> str:
        return f"postgresql://tierguard@127.0.0.1:{self.port}/{db}"

    def create_database(self, name: str) -> str:
        import psycopg

        with psycopg.connect(self.url("postgres"), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def stop(self, keep: bool = False) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)  # fast shutdown
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None
        if not keep:
            shutil.rmtree(self.tmp, ignore_errors=True)

    def __enter__(self) -> PostgresServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        with contextlib.suppress(Exception):
            self.stop()
