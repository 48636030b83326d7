"""A throwaway PostgreSQL from Debian's ``postgresql`` package, as a child process.

Started the way the broker is (``dev/broker.py``): its own data directory and a free
port on 127.0.0.1, owned by the package's ``postgres`` user when we are root (PostgreSQL
refuses to run as root), removed when stopped. ``make test`` runs the integration tests
on it as well as on SQLite, so CI covers the database production uses. Durability is
turned off (``fsync``): it is a test database, thrown away afterwards.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import structlog
from sqlalchemy import create_engine, text

from biox.dev.host import chown_tree, free_port, setpriv_args

log = structlog.get_logger("biox.launcher")

USER = "biox"


class PostgresError(RuntimeError):
    pass


def binaries() -> Path | None:
    """The newest installed server's bin directory (``/usr/lib/postgresql/<v>/bin``)."""
    versions = sorted(
        (p for p in Path("/usr/lib/postgresql").glob("*/bin") if (p / "pg_ctl").exists()),
        key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0,
    )
    return versions[-1] if versions else None


class LocalPostgres:
    def __init__(self) -> None:
        self.directory: Path | None = None
        self.port = 0
        self.bin = binaries()

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://{USER}@127.0.0.1:{self.port}/postgres"

    def database_url(self, name: str) -> str:
        return self.url.rsplit("/", 1)[0] + f"/{name}"

    def _run(self, *cmd: str) -> None:
        argv = list(cmd)
        if os.geteuid() == 0:
            argv = ["setpriv", *setpriv_args("postgres"), *argv]
        done = subprocess.run(
            argv, capture_output=True, text=True, timeout=120, env={**os.environ, "LC_ALL": "C"}
        )
        if done.returncode != 0:
            raise PostgresError(f"{Path(cmd[0]).name}: {(done.stdout + done.stderr)[-1500:]}")

    def start(self) -> LocalPostgres:
        if self.bin is None:
            raise PostgresError(
                "PostgreSQL is not installed: run `make postgresql` (as root), "
                "or set BIOX_DATABASE_URL to an existing server"
            )
        self.directory = Path(tempfile.mkdtemp(prefix="biox-postgres-"))
        data = self.directory / "data"
        self.port = free_port()
        if os.geteuid() == 0:
            chown_tree(self.directory, "postgres")
        self._run(
            str(self.bin / "initdb"),
            "-D",
            str(data),
            "-U",
            USER,
            "--auth=trust",
            "-E",
            "UTF8",
            "--no-instructions",
        )
        options = (
            f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.directory} "
            "-c fsync=off -c synchronous_commit=off -c full_page_writes=off "
            "-c max_connections=300"
        )
        log_file = str(self.directory / "server.log")
        self._run(
            str(self.bin / "pg_ctl"),
            "-D",
            str(data),
            "-l",
            log_file,
            "-o",
            options,
            "-w",
            "-t",
            "60",
            "start",
        )
        log.info("postgres_started", url=self.url, directory=str(self.directory))
        return self

    def create_databases(self, *names: str) -> None:
        engine = create_engine(self.url, isolation_level="AUTOCOMMIT")
        try:
            with engine.connect() as conn:
                for name in names:
                    conn.execute(text(f'CREATE DATABASE "{name}"'))
        finally:
            engine.dispose()

    def stop(self) -> None:
        if self.directory is None or self.bin is None:
            return
        try:
            self._run(
                str(self.bin / "pg_ctl"),
                "-D",
                str(self.directory / "data"),
                "-m",
                "immediate",
                "-w",
                "stop",
            )
        except PostgresError as exc:
            log.warning("postgres_stop_failed", error=str(exc))
        time.sleep(0.1)
        shutil.rmtree(self.directory, ignore_errors=True)
        self.directory = None
