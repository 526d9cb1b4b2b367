"""A PostgreSQL server for tests: Debian's binaries (package ``postgresql``), a fresh data directory in a temporary
folder, a Unix socket there and no TCP port, stopped and removed afterwards. PostgreSQL refuses to run as root; as
root the server runs as the ``postgres`` user the package creates."""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Iterator

BINARIES = sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)


def unavailable() -> str | None:
    """Why no server can start here, or None."""
    if not BINARIES or not (BINARIES[0] / "initdb").is_file():
        return "PostgreSQL's binaries are not installed (Debian: apt-get install postgresql)"
    try:
        import psycopg  # noqa: F401
        import sqlalchemy  # noqa: F401
    except ImportError:
        return "psycopg and sqlalchemy are not installed (pip install 'togi[cluster]')"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return "running as root, and there is no postgres user to run the server as"
    return None


@contextlib.contextmanager
def postgres_server() -> Iterator[str]:
    """Start a server; yield its URL (database ``postgres``, user ``togi``, trusted on the socket)."""
    binaries = BINARIES[0]
    folder = Path(tempfile.mkdtemp(prefix="togi-pg-"))
    as_user: list[str] = []
    if os.geteuid() == 0:
        shutil.chown(folder, "postgres")
        as_user = ["runuser", "-u", "postgres", "--"]
    data = folder / "data"
    try:
        subprocess.run([*as_user, str(binaries / "initdb"), "-D", str(data), "-A", "trust", "-U", "togi"], check=True, capture_output=True)
        subprocess.run([*as_user, str(binaries / "pg_ctl"), "-D", str(data), "-l", str(folder / "server.log"), "-w", "start",
                        "-o", f"-k {folder} -c listen_addresses='' -c max_connections=200"], check=True, capture_output=True)
        yield f"postgresql://togi@/postgres?host={folder}"
    finally:
        subprocess.run([*as_user, str(binaries / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"], capture_output=True)
        shutil.rmtree(folder, ignore_errors=True)
