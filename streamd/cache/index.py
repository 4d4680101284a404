"""The cache index: what is cached (size, digests, hits, last access) and what is queued.

A small SQLite file inside the cache directory, local to the node. It is a
record, not the truth: the files are. ``reconcile`` makes the index agree with
the directory at start-up (a lost or stale index is rebuilt from disk), and an
entry without digests is verified before it is trusted.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path

_SCHEMA = """
CREATE TABLE IF NOT EXISTS cached_images (
    image_id TEXT PRIMARY KEY,
    size INTEGER NOT NULL,
    checksum TEXT,
    os_hash_algo TEXT,
    os_hash_value TEXT,
    hits INTEGER NOT NULL DEFAULT 0,
    last_accessed REAL NOT NULL,
    last_modified REAL NOT NULL,
    verified_at REAL
);
CREATE TABLE IF NOT EXISTS queued_images (
    image_id TEXT PRIMARY KEY,
    queued_at REAL NOT NULL
);
"""


@dataclass(frozen=True)
class CacheEntry:
    image_id: str
    size: int
    checksum: str | None
    os_hash_algo: str | None
    os_hash_value: str | None
    hits: int
    last_accessed: float
    last_modified: float
    verified_at: float | None


class CacheIndex:
    """Blocking; every method is called from a worker thread (one connection, serialized)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        try:
            self._db = self._open()
        except sqlite3.DatabaseError:
            # A corrupt index is rebuilt from the files.
            path.unlink(missing_ok=True)
            self._db = self._open()

    def _open(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        db.executescript(_SCHEMA)
        return db

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # -- cached ---------------------------------------------------------------------------

    def add(self, image_id: str, size: int, checksum: str | None, algo: str | None, value: str | None,
            verified: bool) -> None:
        now = time.time()
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO cached_images (image_id, size, checksum, os_hash_algo, os_hash_value, "
                "hits, last_accessed, last_modified, verified_at) VALUES (?, ?, ?, ?, ?, 0, ?, ?, ?)",
                (image_id, size, checksum, algo, value, now, now, now if verified else None))

    def get(self, image_id: str) -> CacheEntry | None:
        with self._lock:
            row = self._db.execute("SELECT * FROM cached_images WHERE image_id = ?", (image_id,)).fetchone()
        return CacheEntry(*row) if row else None

    def touch(self, image_id: str) -> None:
        with self._lock:
            self._db.execute("UPDATE cached_images SET hits = hits + 1, last_accessed = ? WHERE image_id = ?",
                             (time.time(), image_id))

    def mark_verified(self, image_id: str, checksum: str | None = None, algo: str | None = None,
                      value: str | None = None) -> None:
        """Record a successful check, and the digests it found (an entry rebuilt from disk has none yet:
        without them every later hit would be re-hashed)."""
        with self._lock:
            self._db.execute(
                "UPDATE cached_images SET verified_at = ?, checksum = COALESCE(?, checksum), "
                "os_hash_algo = COALESCE(?, os_hash_algo), os_hash_value = COALESCE(?, os_hash_value) "
                "WHERE image_id = ?", (time.time(), checksum, algo, value, image_id))

    def remove(self, image_id: str) -> None:
        with self._lock:
            self._db.execute("DELETE FROM cached_images WHERE image_id = ?", (image_id,))

    def entries(self) -> list[CacheEntry]:
        with self._lock:
            rows = self._db.execute("SELECT * FROM cached_images ORDER BY last_accessed").fetchall()
        return [CacheEntry(*row) for row in rows]

    def total_size(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT COALESCE(SUM(size), 0) FROM cached_images").fetchone()[0])

    # -- queued ---------------------------------------------------------------------------

    def queue(self, image_id: str) -> bool:
        with self._lock:
            cursor = self._db.execute("INSERT OR IGNORE INTO queued_images (image_id, queued_at) VALUES (?, ?)",
                                      (image_id, time.time()))
        return cursor.rowcount == 1

    def dequeue(self, image_id: str) -> bool:
        with self._lock:
            cursor = self._db.execute("DELETE FROM queued_images WHERE image_id = ?", (image_id,))
        return cursor.rowcount == 1

    def queued(self) -> list[tuple[str, float]]:
        with self._lock:
            return [(r[0], r[1]) for r in self._db.execute(
                "SELECT image_id, queued_at FROM queued_images ORDER BY queued_at").fetchall()]

    def clear_queue(self) -> int:
        with self._lock:
            return self._db.execute("DELETE FROM queued_images").rowcount
