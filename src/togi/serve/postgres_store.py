"""The server's state in PostgreSQL, for several API replicas on one database (``togi serve --database postgresql://...``).

The same records as ``SQLiteStore`` (``store.py``), through SQLAlchemy and psycopg, with the schema managed by Alembic
(``migrations/``): every start upgrades the database to the newest revision, under an advisory lock, so replicas
starting together migrate it once. A record's update reads it ``FOR UPDATE`` in its own transaction, so two replicas
changing one job never lose each other's change; ``claim`` changes a record only while it still holds the expected
values, which is how a replica takes a queued job without another taking it too.
"""

from __future__ import annotations

import json
import secrets
import time
from pathlib import Path
from typing import Any

from togi.serve.store import UpdateByClaim, hash_key

MIGRATIONS = Path(__file__).parent / "migrations"
MIGRATION_LOCK = 0x746F6769  # "togi": the advisory lock every replica takes to migrate


def sqlalchemy_url(url: str) -> str:
    """postgresql://... as SQLAlchemy names the psycopg 3 driver."""
    for prefix in ("postgresql+psycopg://", "postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix):]
    raise ValueError(f"{url!r} is not a PostgreSQL URL (postgresql://user@host:port/database)")


class PostgresStore(UpdateByClaim):
    def __init__(self, url: str) -> None:
        import sqlalchemy

        self.url = url
        self._engine = sqlalchemy.create_engine(sqlalchemy_url(url), pool_pre_ping=True, pool_size=5, max_overflow=10)
        self._text = sqlalchemy.text
        self.migrate()

    def migrate(self) -> None:
        """Upgrade the schema to the newest revision (a no-op when it is there already)."""
        from alembic import command
        from alembic.config import Config

        config = Config()
        config.set_main_option("script_location", str(MIGRATIONS))
        with self._engine.begin() as connection:
            connection.execute(self._text("SELECT pg_advisory_xact_lock(:lock)"), {"lock": MIGRATION_LOCK})
            config.attributes["connection"] = connection
            command.upgrade(config, "head")

    def close(self) -> None:
        self._engine.dispose()

    # keys
    def create_key(self, organization: str) -> str:
        key = f"sk-togi-{secrets.token_urlsafe(24)}"
        with self._engine.begin() as connection:
            connection.execute(self._text("INSERT INTO api_keys VALUES (:hash, :organization, :created_at)"),
                               {"hash": hash_key(key), "organization": organization, "created_at": int(time.time())})
        return key

    def organization_of_key(self, key: str) -> str | None:
        with self._engine.connect() as connection:
            return connection.execute(self._text("SELECT organization FROM api_keys WHERE hash = :hash"), {"hash": hash_key(key)}).scalar()

    def has_keys(self) -> bool:
        with self._engine.connect() as connection:
            return connection.execute(self._text("SELECT 1 FROM api_keys LIMIT 1")).first() is not None

    # records
    def put(self, kind: str, record: dict[str, Any], organization: str, parent: str | None = None) -> dict[str, Any]:
        with self._engine.begin() as connection:
            connection.execute(self._text("INSERT INTO records (kind, id, organization, parent, body) "
                                          "VALUES (:kind, :id, :organization, :parent, :body)"),
                               {"kind": kind, "id": record["id"], "organization": organization, "parent": parent,
                                "body": json.dumps(record, ensure_ascii=False)})
        return record

    def get(self, kind: str, record_id: str, organization: str | None = None) -> dict[str, Any] | None:
        query, values = "SELECT body FROM records WHERE kind = :kind AND id = :id", {"kind": kind, "id": record_id}
        if organization is not None:
            query, values = query + " AND organization = :organization", {**values, "organization": organization}
        with self._engine.connect() as connection:
            body = connection.execute(self._text(query), values).scalar()
        return json.loads(body) if body is not None else None

    def claim(self, kind: str, record_id: str, expected: dict[str, Any], **changes: Any) -> dict[str, Any] | None:
        """Apply ``changes`` if the record still holds every ``expected`` value, in one transaction with the row
        locked; the changed record, or None when it is gone or no longer as expected."""
        with self._engine.begin() as connection:
            body = connection.execute(self._text("SELECT body FROM records WHERE kind = :kind AND id = :id FOR UPDATE"),
                                      {"kind": kind, "id": record_id}).scalar()
            if body is None:
                return None
            record = json.loads(body)
            if any(record.get(key) != value for key, value in expected.items()):
                return None
            record.update(changes)
            connection.execute(self._text("UPDATE records SET body = :body WHERE kind = :kind AND id = :id"),
                               {"body": json.dumps(record, ensure_ascii=False), "kind": kind, "id": record_id})
        return record

    def delete(self, kind: str, record_id: str) -> None:
        with self._engine.begin() as connection:
            connection.execute(self._text("DELETE FROM records WHERE kind = :kind AND id = :id"), {"kind": kind, "id": record_id})

    def list(self, kind: str, organization: str | None = None, parent: str | None = None,
             where: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        """Records of one kind, newest first, optionally of one organization or parent and with field values."""
        query, values = "SELECT body FROM records WHERE kind = :kind", {"kind": kind}
        if organization is not None:
            query, values = query + " AND organization = :organization", {**values, "organization": organization}
        if parent is not None:
            query, values = query + " AND parent = :parent", {**values, "parent": parent}
        with self._engine.connect() as connection:
            rows = connection.execute(self._text(query + " ORDER BY seq DESC"), values).scalars().all()
        records = [json.loads(body) for body in rows]
        return [r for r in records if all(r.get(key) == value for key, value in (where or {}).items())]
