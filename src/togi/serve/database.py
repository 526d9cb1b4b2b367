"""Which store ``togi serve --database`` names: the embedded SQLite store, or PostgreSQL for several replicas. Apart from
``store.py`` so that neither store module imports the other."""

from __future__ import annotations

from pathlib import Path

from togi.errors import TogiError
from togi.serve.store import SQLiteStore, Store


def open_store(database: str | None, data_dir: Path) -> Store:
    """The store ``togi serve --database`` names: SQLite in the data directory by default (or ``sqlite:///PATH``), or
    PostgreSQL (``postgresql://user@host:port/database``), which several API replicas can share."""
    if database is None:
        return SQLiteStore(data_dir.resolve() / "togi.db")
    if database.startswith("sqlite:///"):
        return SQLiteStore(Path(database.removeprefix("sqlite:///")))
    if database.startswith(("postgresql://", "postgres://", "postgresql+psycopg://")):
        try:
            from togi.serve.postgres_store import PostgresStore

            return PostgresStore(database)
        except ImportError as error:
            raise TogiError(f"--database {database.split('@')[-1]}: {error.name} is not installed", "pip install 'togi[cluster]'") from None
        except Exception as error:  # the driver's connection errors: a server that is down, a bad password, no database
            if type(error).__module__.split(".")[0] not in ("sqlalchemy", "psycopg", "alembic"):
                raise
            first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise TogiError(f"--database: cannot use the PostgreSQL database: {first_line}",
                            "check that the server runs and the URL's user, host, port and database are right") from None
    raise TogiError(f"--database {database!r} is neither postgresql://... nor sqlite:///PATH",
                    "for example --database postgresql://togi@db.internal:5432/togi")
