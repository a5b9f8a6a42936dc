"""The local runtime's state: SageMaker resources as JSON records in SQLite, so they survive a restart.

Status changes go through ``transition``, a compare-and-set: of two threads (or two runtimes)
that try to move a job out of the same state, exactly one wins, so each state-change event is
emitted once.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any


class StoreError(Exception):
    pass


class Store:
    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=30)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS resources (kind TEXT NOT NULL, name TEXT NOT NULL, status TEXT,"
            " data TEXT NOT NULL, created REAL DEFAULT (julianday('now')), PRIMARY KEY (kind, name))"
        )

    def insert(self, kind: str, name: str, data: dict[str, Any], status: str | None = None) -> bool:
        """Add a record; ``False`` when one by that name exists (nothing changes)."""
        with self._lock:
            try:
                self._db.execute(
                    "INSERT INTO resources (kind, name, status, data) VALUES (?, ?, ?, ?)",
                    (kind, name, status, json.dumps(data, default=str)),
                )
            except sqlite3.IntegrityError:
                return False
            return True

    def get(self, kind: str, name: str) -> dict[str, Any] | None:
        with self._lock:
            row = self._db.execute("SELECT data FROM resources WHERE kind=? AND name=?", (kind, name)).fetchone()
        return json.loads(row[0]) if row else None

    def status(self, kind: str, name: str) -> str | None:
        with self._lock:
            row = self._db.execute("SELECT status FROM resources WHERE kind=? AND name=?", (kind, name)).fetchone()
        return row[0] if row else None

    def update(self, kind: str, name: str, **changes: Any) -> dict[str, Any]:
        """Merge ``changes`` into the record (not its status) and return it."""
        with self._lock:
            data = self.get(kind, name)
            if data is None:
                raise StoreError(f"no {kind} {name}")
            data.update(changes)
            self._db.execute(
                "UPDATE resources SET data=? WHERE kind=? AND name=?", (json.dumps(data, default=str), kind, name)
            )
            return data

    def transition(self, kind: str, name: str, from_status: tuple[str, ...], to_status: str, **changes: Any) -> bool:
        """Move the record to ``to_status`` if it is in one of ``from_status``; ``True`` if this call did."""
        with self._lock:
            data = self.get(kind, name)
            if data is None:
                return False
            data.update(changes)
            marks = ",".join("?" * len(from_status))
            cursor = self._db.execute(
                f"UPDATE resources SET status=?, data=? WHERE kind=? AND name=? AND status IN ({marks})",
                (to_status, json.dumps(data, default=str), kind, name, *from_status),
            )
            return cursor.rowcount == 1

    def delete(self, kind: str, name: str) -> bool:
        """Remove the record; ``True`` if there was one."""
        with self._lock:
            return self._db.execute("DELETE FROM resources WHERE kind=? AND name=?", (kind, name)).rowcount == 1

    def names(self, kind: str, status: str | None = None) -> list[str]:
        with self._lock:
            if status is None:
                rows = self._db.execute("SELECT name FROM resources WHERE kind=? ORDER BY created, name", (kind,))
            else:
                rows = self._db.execute(
                    "SELECT name FROM resources WHERE kind=? AND status=? ORDER BY created, name", (kind, status)
                )
            return [r[0] for r in rows.fetchall()]

    def records(self, kind: str) -> Iterator[tuple[str, str | None, dict[str, Any]]]:
        with self._lock:
            rows = self._db.execute(
                "SELECT name, status, data FROM resources WHERE kind=? ORDER BY created, name", (kind,)
            ).fetchall()
        for name, status, data in rows:
            yield name, status, json.loads(data)

    def close(self) -> None:
        with self._lock:
            self._db.close()
