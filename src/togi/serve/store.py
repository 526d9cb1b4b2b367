"""The server's state: organizations, API keys, files, jobs, events, checkpoints and models.

``Store`` is the interface the server and the job processes use; ``SQLiteStore`` is the embedded
default. Every record is a JSON document in a table keyed by id and owning organization, with a
sequence number for newest-first listing, so another backend (PostgreSQL) only has to implement these
few methods. SQLite runs in WAL mode so the server and its job processes can write at once; each write
is its own transaction, so a killed process loses nothing it had written.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any, Protocol

KINDS = ("file", "job", "event", "checkpoint", "model", "evaluation")


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def new_id(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(12)}"


class Store(Protocol):
    def create_key(self, organization: str) -> str: ...
    def organization_of_key(self, key: str) -> str | None: ...
    def has_keys(self) -> bool: ...
    def put(self, kind: str, record: dict[str, Any], organization: str, parent: str | None = None) -> dict[str, Any]: ...
    def get(self, kind: str, record_id: str, organization: str | None = None) -> dict[str, Any] | None: ...
    def update(self, kind: str, record_id: str, **changes: Any) -> dict[str, Any]: ...
    def claim(self, kind: str, record_id: str, expected: dict[str, Any], **changes: Any) -> dict[str, Any] | None: ...
    def delete(self, kind: str, record_id: str) -> None: ...
    def list(self, kind: str, organization: str | None = None, parent: str | None = None,
             where: dict[str, Any] | None = None) -> list[dict[str, Any]]: ...


class UpdateByClaim:
    """``update`` for a store that has ``claim``: a claim that expects nothing, and a missing record a KeyError."""

    def claim(self, kind: str, record_id: str, expected: dict[str, Any], **changes: Any) -> dict[str, Any] | None:
        raise NotImplementedError

    def update(self, kind: str, record_id: str, **changes: Any) -> dict[str, Any]:
        record = self.claim(kind, record_id, {}, **changes)
        if record is None:
            raise KeyError(record_id)
        return record


class SQLiteStore(UpdateByClaim):
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.url = f"sqlite:///{path.resolve()}"  # what a job process is given to open the same store
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(path), check_same_thread=False, timeout=30, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("CREATE TABLE IF NOT EXISTS api_keys (hash TEXT PRIMARY KEY, organization TEXT NOT NULL, created_at INTEGER)")
        self._db.execute("CREATE TABLE IF NOT EXISTS records (seq INTEGER PRIMARY KEY AUTOINCREMENT, kind TEXT NOT NULL, "
                         "id TEXT NOT NULL UNIQUE, organization TEXT NOT NULL, parent TEXT, body TEXT NOT NULL)")
        self._db.execute("CREATE INDEX IF NOT EXISTS records_by_kind ON records (kind, organization, parent)")

    # keys
    def create_key(self, organization: str) -> str:
        key = f"sk-togi-{secrets.token_urlsafe(24)}"
        with self._lock:
            self._db.execute("INSERT INTO api_keys VALUES (?, ?, ?)", (hash_key(key), organization, int(time.time())))
        return key

    def organization_of_key(self, key: str) -> str | None:
        with self._lock:
            row = self._db.execute("SELECT organization FROM api_keys WHERE hash = ?", (hash_key(key),)).fetchone()
        return row[0] if row else None

    def has_keys(self) -> bool:
        with self._lock:
            return self._db.execute("SELECT 1 FROM api_keys LIMIT 1").fetchone() is not None

    # records
    def put(self, kind: str, record: dict[str, Any], organization: str, parent: str | None = None) -> dict[str, Any]:
        with self._lock:
            self._db.execute("INSERT INTO records (kind, id, organization, parent, body) VALUES (?, ?, ?, ?, ?)",
                             (kind, record["id"], organization, parent, json.dumps(record, ensure_ascii=False)))
        return record

    def get(self, kind: str, record_id: str, organization: str | None = None) -> dict[str, Any] | None:
        query, values = "SELECT body FROM records WHERE kind = ? AND id = ?", [kind, record_id]
        if organization is not None:
            query, values = query + " AND organization = ?", values + [organization]
        with self._lock:
            row = self._db.execute(query, values).fetchone()
        return json.loads(row[0]) if row else None

    def claim(self, kind: str, record_id: str, expected: dict[str, Any], **changes: Any) -> dict[str, Any] | None:
        """Apply ``changes`` if the record still holds every ``expected`` value, in one write transaction; the changed
        record, or None when it is gone or no longer as expected (another process took it first)."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                row = self._db.execute("SELECT body FROM records WHERE kind = ? AND id = ?", (kind, record_id)).fetchone()
                record = json.loads(row[0]) if row else None
                if record is None or any(record.get(key) != value for key, value in expected.items()):
                    self._db.execute("ROLLBACK")
                    return None
                record.update(changes)
                self._db.execute("UPDATE records SET body = ? WHERE kind = ? AND id = ?",
                                 (json.dumps(record, ensure_ascii=False), kind, record_id))
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return record

    def delete(self, kind: str, record_id: str) -> None:
        with self._lock:
            self._db.execute("DELETE FROM records WHERE kind = ? AND id = ?", (kind, record_id))

    def list(self, kind: str, organization: str | None = None, parent: str | None = None,
             where: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        """Records of one kind, newest first, optionally of one organization or parent and with field values."""
        query, values = "SELECT body FROM records WHERE kind = ?", [kind]
        if organization is not None:
            query, values = query + " AND organization = ?", values + [organization]
        if parent is not None:
            query, values = query + " AND parent = ?", values + [parent]
        with self._lock:
            rows = self._db.execute(query + " ORDER BY seq DESC", values).fetchall()
        records = [json.loads(row[0]) for row in rows]
        return [r for r in records if all(r.get(key) == value for key, value in (where or {}).items())]
