"""The local runtime's state: SageMaker resources as JSON records in SQLite, so they survive a restart.

Status changes go through ``transition``, a compare-and-set: of two threads (or two runtimes)
that try to move a job out of the same state, exactly one wins, so each state-change event is
emitted once.

A full disk never leaves a job's state unrecorded: the store keeps a reserve file beside the
database, given up the first time a write finds the disk full, so that the failures that follow can
still be written; a write that still finds the disk full is retried with backoff, then raises
``StoreWriteError`` naming the cause (as does one that waited out another process's lock).

A record whose JSON cannot be read (a write torn by a full disk or a crash) never stops the stack:
``quarantine`` moves it aside, and ``records`` leaves it out and names it in ``unreadable``.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

RESERVE_BYTES = 2 * 1024 * 1024  # room for hundreds of records, given up when the disk is full
WRITE_ATTEMPTS = 6  # over about 3 s of backoff


class StoreError(Exception):
    pass


class StoreWriteError(StoreError):
    """The state database could not be written: the disk is full, or another process holds it."""


class Store:
    def __init__(self, path: Path, reserve: bool = False):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._reserve = path.with_name(path.name + ".reserve")
        if reserve:  # the running stack's; readers (droptrain status, runs) write nothing
            self._keep_reserve()
        self._lock = threading.RLock()
        try:
            self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=30)
            self._db.execute("PRAGMA journal_mode=WAL")  # creates the -wal and -shm files: a full disk fails here
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS resources (kind TEXT NOT NULL, name TEXT NOT NULL, status TEXT,"
                " data TEXT NOT NULL, created REAL DEFAULT (julianday('now')), PRIMARY KEY (kind, name))"
            )
        except sqlite3.OperationalError as exc:
            raise StoreWriteError(f"{path} could not be opened ({exc}): is its disk full?") from exc
        self.unreadable: list[str] = []  # what ``records`` left out, one line each

    def quarantine(self) -> list[str]:
        """Move every record whose JSON cannot be read into the ``quarantined`` table, where a person
        can still read it; one line for each, naming it."""
        with self._lock:
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS quarantined (kind TEXT, name TEXT, status TEXT, data TEXT, why TEXT,"
                " moved REAL DEFAULT (julianday('now')))"
            )
            rows = self._db.execute("SELECT kind, name, status, data FROM resources").fetchall()
            lines = []
            for kind, name, status, data in rows:
                why = _unreadable(data)
                if why is None:
                    continue
                self._db.execute("BEGIN")
                self._db.execute(
                    "INSERT INTO quarantined (kind, name, status, data, why) VALUES (?, ?, ?, ?, ?)",
                    (kind, name, status, data, why),
                )
                self._db.execute("DELETE FROM resources WHERE kind=? AND name=?", (kind, name))
                self._db.execute("COMMIT")
                lines.append(_line(kind, name, why) + ": moved to the table 'quarantined' of state.db")
            return lines

    def _keep_reserve(self) -> None:
        if self._reserve.exists():
            return
        try:
            with open(self._reserve, "wb") as handle:
                handle.write(bytes(RESERVE_BYTES))  # written, not sparse: a sparse file would free nothing
        except OSError:
            self._reserve.unlink(missing_ok=True)  # no room for it now: the next start tries again

    def _write(self, sql: str, params: tuple[Any, ...]) -> sqlite3.Cursor:
        """``sql`` executed; a full disk first gives up the reserve, then, like a lock, is retried."""
        for attempt in range(WRITE_ATTEMPTS):
            try:
                return self._db.execute(sql, params)
            except sqlite3.OperationalError as exc:
                full = "full" in str(exc)
                if full and self._reserve.exists():
                    os.unlink(self._reserve)
                    log.warning("the disk holding %s is full: its reserve was given up to keep recording", self.path)
                    continue
                # A lock was waited on already (the connection's 30 s timeout): only a full disk is retried.
                if not full or attempt == WRITE_ATTEMPTS - 1:
                    raise StoreWriteError(f"{self.path} could not be written ({exc}): free some disk space") from exc
                time.sleep(0.1 * 2**attempt)
        raise AssertionError("unreachable")

    def insert(self, kind: str, name: str, data: dict[str, Any], status: str | None = None) -> bool:
        """Add a record; ``False`` when one by that name exists (nothing changes)."""
        with self._lock:
            try:
                self._write(
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
            self._write(
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
            cursor = self._write(
                f"UPDATE resources SET status=?, data=? WHERE kind=? AND name=? AND status IN ({marks})",
                (to_status, json.dumps(data, default=str), kind, name, *from_status),
            )
            return cursor.rowcount == 1

    def delete(self, kind: str, name: str) -> bool:
        """Remove the record; ``True`` if there was one."""
        with self._lock:
            return self._write("DELETE FROM resources WHERE kind=? AND name=?", (kind, name)).rowcount == 1

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
            why = _unreadable(data)
            if why is None:
                yield name, status, json.loads(data)
            elif _line(kind, name, why) not in self.unreadable:
                self.unreadable.append(_line(kind, name, why))

    def close(self) -> None:
        with self._lock:
            self._db.close()


def _unreadable(data: str) -> str | None:
    """Why ``data`` is not a record (``None`` when it is one)."""
    try:
        record = json.loads(data)
    except (json.JSONDecodeError, TypeError) as exc:
        return f"its JSON ends or breaks at character {getattr(exc, 'pos', '?')} of {len(data or '')}"
    return None if isinstance(record, dict) else f"its JSON is a {type(record).__name__}, not an object"


def _line(kind: str, name: str, why: str) -> str:
    return f"the {kind} record {name!r} in state.db cannot be read ({why})"
