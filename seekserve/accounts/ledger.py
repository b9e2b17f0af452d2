"""The ledger: API keys, their balances and one usage row per request, in SQLite.

    api_keys   id, name, key_hash (sha256 of the key; the key itself is never stored),
               key_last4, created_at, revoked_at, granted_nano, topped_up_nano,
               concurrency_limit (NULL: the server's default)
    usage      id, key_id, request_id, model, hit/miss/output tokens, cost_nano, created_at
    top_ups    id, key_id, granted_nano, topped_up_nano, created_at (an audit trail)

The database runs in WAL mode with `synchronous=FULL`: a committed row survives kill -9 and
power loss. The schema is created and upgraded by numbered migrations (`PRAGMA
user_version`). A request's usage row and its balance deduction are one transaction
(granted balance first, then topped-up, which may go below zero by what requests in flight
spent). Rows are written by `UsageWriter`'s own thread, never by the engine's step loop.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import queue
import secrets
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

_MIGRATIONS = (
    # 1: keys, usage, top-ups
    """
    CREATE TABLE api_keys (
        id INTEGER PRIMARY KEY,
        name TEXT NOT NULL,
        key_hash TEXT NOT NULL UNIQUE,
        key_last4 TEXT NOT NULL,
        created_at REAL NOT NULL,
        revoked_at REAL,
        granted_nano INTEGER NOT NULL DEFAULT 0,
        topped_up_nano INTEGER NOT NULL DEFAULT 0,
        concurrency_limit INTEGER
    );
    CREATE TABLE usage (
        id INTEGER PRIMARY KEY,
        key_id INTEGER NOT NULL REFERENCES api_keys(id),
        request_id TEXT NOT NULL,
        model TEXT NOT NULL,
        hit_tokens INTEGER NOT NULL,
        miss_tokens INTEGER NOT NULL,
        output_tokens INTEGER NOT NULL,
        cost_nano INTEGER NOT NULL,
        created_at REAL NOT NULL
    );
    CREATE INDEX usage_by_key ON usage(key_id);
    CREATE TABLE top_ups (
        id INTEGER PRIMARY KEY,
        key_id INTEGER NOT NULL REFERENCES api_keys(id),
        granted_nano INTEGER NOT NULL,
        topped_up_nano INTEGER NOT NULL,
        created_at REAL NOT NULL
    );
    """,
)


@dataclass(frozen=True)
class KeyRecord:
    id: int
    name: str
    key_last4: str
    created_at: float
    revoked_at: float | None
    granted_nano: int
    topped_up_nano: int
    concurrency_limit: int | None

    @property
    def total_nano(self) -> int:
        return self.granted_nano + self.topped_up_nano

    @property
    def is_revoked(self) -> bool:
        return self.revoked_at is not None


@dataclass(frozen=True)
class UsageRow:
    key_id: int
    request_id: str
    model: str
    hit_tokens: int
    miss_tokens: int
    output_tokens: int
    cost_nano: int
    created_at: float


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def connect(path: str | Path) -> sqlite3.Connection:
    """A connection in WAL mode with full syncs, the schema migrated to the latest version."""
    conn = sqlite3.connect(str(path), timeout=30.0, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("PRAGMA foreign_keys=ON")
    _migrate(conn)
    return conn


def _migrate(conn: sqlite3.Connection) -> None:
    conn.execute("BEGIN IMMEDIATE")
    try:
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version > len(_MIGRATIONS):
            raise RuntimeError(
                f"ledger schema version {version} is newer than this SeekServe knows "
                f"({len(_MIGRATIONS)}); upgrade SeekServe"
            )
        for number, script in enumerate(_MIGRATIONS[version:], start=version + 1):
            for statement in script.split(";"):
                if statement.strip():
                    conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {number}")
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


_KEY_COLUMNS = (
    "id, name, key_last4, created_at, revoked_at, granted_nano, topped_up_nano, concurrency_limit"
)


class Ledger:
    """Keys and balances (reads and admin writes); usage rows go through `UsageWriter`."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._conn = connect(self.path)
        self._lock = threading.Lock()  # one connection, shared by the API's threads

    def close(self) -> None:
        self._conn.close()

    # -- keys --------------------------------------------------------------------------------

    def create_key(
        self,
        name: str,
        granted_nano: int = 0,
        topped_up_nano: int = 0,
        concurrency_limit: int | None = None,
    ) -> tuple[str, KeyRecord]:
        """A new key; the returned plaintext is shown once and never stored."""
        key = "sk-" + secrets.token_hex(16)
        with self._lock:
            cursor = self._conn.execute(
                "INSERT INTO api_keys (name, key_hash, key_last4, created_at, granted_nano, "
                "topped_up_nano, concurrency_limit) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    name,
                    hash_key(key),
                    key[-4:],
                    time.time(),
                    granted_nano,
                    topped_up_nano,
                    concurrency_limit,
                ),
            )
        record = self.key(int(cursor.lastrowid or 0))
        assert record is not None
        return key, record

    def authenticate(self, key: str) -> KeyRecord | None:
        """The live (not revoked) key record for a presented key, or None."""
        digest = hash_key(key)
        with self._lock:
            row = self._conn.execute(
                f"SELECT {_KEY_COLUMNS}, key_hash FROM api_keys WHERE key_hash = ?", (digest,)
            ).fetchone()
        if row is None or not hmac.compare_digest(row[-1], digest):
            return None
        record = KeyRecord(*row[:-1])
        return None if record.is_revoked else record

    def key(self, key_id: int) -> KeyRecord | None:
        with self._lock:
            row = self._conn.execute(
                f"SELECT {_KEY_COLUMNS} FROM api_keys WHERE id = ?", (key_id,)
            ).fetchone()
        return None if row is None else KeyRecord(*row)

    def list_keys(self) -> list[KeyRecord]:
        with self._lock:
            rows = self._conn.execute(f"SELECT {_KEY_COLUMNS} FROM api_keys ORDER BY id").fetchall()
        return [KeyRecord(*row) for row in rows]

    def revoke(self, key_id: int) -> bool:
        """True if a live key was revoked."""
        with self._lock:
            cursor = self._conn.execute(
                "UPDATE api_keys SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL",
                (time.time(), key_id),
            )
        return cursor.rowcount == 1

    def top_up(self, key_id: int, topped_up_nano: int = 0, granted_nano: int = 0) -> KeyRecord:
        if topped_up_nano < 0 or granted_nano < 0:
            raise ValueError("a top-up adds money: amounts must be >= 0")
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                cursor = self._conn.execute(
                    "UPDATE api_keys SET granted_nano = granted_nano + ?, "
                    "topped_up_nano = topped_up_nano + ? WHERE id = ?",
                    (granted_nano, topped_up_nano, key_id),
                )
                if cursor.rowcount != 1:
                    raise KeyError(f"no key with id {key_id}")
                self._conn.execute(
                    "INSERT INTO top_ups (key_id, granted_nano, topped_up_nano, created_at) "
                    "VALUES (?, ?, ?, ?)",
                    (key_id, granted_nano, topped_up_nano, time.time()),
                )
                self._conn.execute("COMMIT")
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
        record = self.key(key_id)
        assert record is not None
        return record

    # -- usage -------------------------------------------------------------------------------

    def usage_rows(self, key_id: int | None = None) -> list[UsageRow]:
        query = (
            "SELECT key_id, request_id, model, hit_tokens, miss_tokens, output_tokens, "
            "cost_nano, created_at FROM usage"
        )
        args: tuple[int, ...] = ()
        if key_id is not None:
            query, args = query + " WHERE key_id = ?", (key_id,)
        with self._lock:
            rows = self._conn.execute(query + " ORDER BY id", args).fetchall()
        return [UsageRow(*row) for row in rows]


def record_usage(conn: sqlite3.Connection, rows: list[UsageRow]) -> None:
    """Insert the rows and deduct their costs (granted first), in one transaction."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        for row in rows:
            conn.execute(
                "INSERT INTO usage (key_id, request_id, model, hit_tokens, miss_tokens, "
                "output_tokens, cost_nano, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    row.key_id,
                    row.request_id,
                    row.model,
                    row.hit_tokens,
                    row.miss_tokens,
                    row.output_tokens,
                    row.cost_nano,
                    row.created_at,
                ),
            )
            # granted first: take min(cost, granted) from it, the rest from topped-up
            conn.execute(
                "UPDATE api_keys SET "
                "topped_up_nano = topped_up_nano - MAX(0, ? - MAX(granted_nano, 0)), "
                "granted_nano = granted_nano - MIN(?, MAX(granted_nano, 0)) WHERE id = ?",
                (row.cost_nano, row.cost_nano, row.key_id),
            )
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


class UsageWriter:
    """A thread that commits usage rows in batches; `submit` never blocks on the disk."""

    _STOP = object()

    def __init__(self, path: str | Path) -> None:
        self._path = Path(path)
        self._queue: queue.Queue[object] = queue.Queue()
        self._idle = threading.Event()
        self._idle.set()
        self._thread = threading.Thread(target=self._run, name="seekserve-ledger", daemon=True)
        self._thread.start()

    def submit(self, row: UsageRow) -> None:
        self._idle.clear()
        self._queue.put(row)

    def flush(self, timeout_s: float = 10.0) -> bool:
        """Wait until every submitted row is committed; False on timeout."""
        return self._idle.wait(timeout_s)

    def close(self, timeout_s: float = 10.0) -> None:
        self._queue.put(self._STOP)
        self._thread.join(timeout_s)

    def _run(self) -> None:
        conn = connect(self._path)
        try:
            while True:
                item = self._queue.get()
                batch: list[UsageRow] = []
                stop = item is self._STOP
                if not stop:
                    batch.append(item)  # type: ignore[arg-type]
                while not self._queue.empty():
                    more = self._queue.get_nowait()
                    if more is self._STOP:
                        stop = True
                    else:
                        batch.append(more)  # type: ignore[arg-type]
                if batch:
                    self._write(conn, batch)
                if self._queue.empty():
                    self._idle.set()
                if stop:
                    return
        finally:
            conn.close()

    def _write(self, conn: sqlite3.Connection, batch: list[UsageRow]) -> None:
        for attempt in range(3):
            try:
                record_usage(conn, batch)
                return
            except sqlite3.Error:
                logger.exception("ledger write failed (attempt %d of 3)", attempt + 1)
                time.sleep(0.1 * (attempt + 1))
        logger.error("dropped %d usage rows after 3 failed writes", len(batch))
