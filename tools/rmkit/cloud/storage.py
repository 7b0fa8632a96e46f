"""Persistent state of the local cloud: users, sessions, user-node associations, mapping requests, node reports,
challenge-response mapping challenges.

`Storage` keeps them in one SQLite file in WAL mode. Every write happens inside `transaction()`, which
takes the database's write lock up front (BEGIN IMMEDIATE) so that several cloud processes sharing one file serialize their
read-check-write sequences (a node publish and a client PUT can never both miss each other).
Read-only work (token checks, status polls, node lists) goes through `read()`: a WAL reader sees the
last committed snapshot and never waits for, nor blocks, a writer.

Writers queue on a lock file next to the database (flock) before BEGIN IMMEDIATE: the kernel wakes
the next writer the moment the lock is free, where SQLite's own busy handler polls with sleeps that
grow to 100 ms (sqlite3.c, sqliteDefaultBusyCallback) and made writes of one process wait behind
another's for a tenth of a second at a time.

Only SQLite is implemented (no second backend is planned, so there is no abstract interface); a
PostgreSQL one would keep these two entry points (e.g. SERIALIZABLE transactions and a READ ONLY one for
read()).
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import secrets
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional

log = logging.getLogger(__name__)

# Tables added later (mapping_challenges) come with CREATE TABLE IF NOT EXISTS, which every open runs, so
# a database made before them simply gains them; the version changes only when an existing table does.
SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS users (
    user_id TEXT PRIMARY KEY,
    email TEXT NOT NULL UNIQUE,
    password_hash TEXT NOT NULL,
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS sessions (
    session_id TEXT PRIMARY KEY,
    user_id TEXT NOT NULL REFERENCES users(user_id),
    refresh_hash TEXT NOT NULL UNIQUE,
    created REAL NOT NULL,
    revoked INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS user_nodes (
    user_id TEXT NOT NULL REFERENCES users(user_id),
    node_id TEXT NOT NULL,
    added REAL NOT NULL,
    PRIMARY KEY (user_id, node_id)
);
CREATE INDEX IF NOT EXISTS user_nodes_by_node ON user_nodes(node_id);
CREATE TABLE IF NOT EXISTS mapping_requests (
    request_id TEXT PRIMARY KEY,
    user_id TEXT NOT NULL REFERENCES users(user_id),
    node_id TEXT NOT NULL,
    secret_key TEXT NOT NULL,
    operation TEXT NOT NULL,
    status TEXT NOT NULL,
    created REAL NOT NULL,
    updated REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS mapping_requests_by_node ON mapping_requests(node_id, status);
CREATE TABLE IF NOT EXISTS node_reports (
    report_id INTEGER PRIMARY KEY AUTOINCREMENT,
    node_id TEXT NOT NULL,
    user_id TEXT NOT NULL,
    secret_key TEXT NOT NULL,
    reset INTEGER NOT NULL,
    received REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS node_reports_by_node ON node_reports(node_id, received);
-- challenge-response mapping (docs/protocol.md 7.1), one row per initiate. status: requested (open
-- until expires), confirmed, or discarded (a verify that failed). node_id is set by the verify.
-- (No semicolons in these comments: the schema is split on them.)
CREATE TABLE IF NOT EXISTS mapping_challenges (
    request_id TEXT PRIMARY KEY,
    user_id TEXT NOT NULL REFERENCES users(user_id),
    challenge TEXT NOT NULL,
    status TEXT NOT NULL,
    node_id TEXT NOT NULL,
    created REAL NOT NULL,
    expires REAL NOT NULL,
    updated REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS mapping_challenges_by_user ON mapping_challenges(user_id, status, expires);
CREATE INDEX IF NOT EXISTS mapping_challenges_by_expiry ON mapping_challenges(expires);
CREATE TABLE IF NOT EXISTS login_failures (
    key TEXT NOT NULL,
    at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS login_failures_by_key ON login_failures(key, at);
"""


@dataclass(frozen=True)
class User:
    user_id: str
    email: str
    password_hash: str
    created: float


@dataclass(frozen=True)
class Session:
    session_id: str
    user_id: str
    created: float
    revoked: bool


@dataclass(frozen=True)
class MappingRequest:
    request_id: str
    user_id: str
    node_id: str
    secret_key: str
    operation: str
    status: str
    created: float
    updated: float


@dataclass(frozen=True)
class MappingChallenge:
    """A challenge issued to `user_id` for request `request_id` (docs/protocol.md 7.1)."""
    request_id: str
    user_id: str
    challenge: str
    status: str  # requested, confirmed, discarded
    node_id: str  # "" until a verify names the node
    created: float
    expires: float
    updated: float


@dataclass(frozen=True)
class NodeReport:
    report_id: int
    node_id: str
    user_id: str
    secret_key: str
    reset: bool
    received: float


def _user(row) -> Optional[User]:
    return None if row is None else User(row[0], row[1], row[2], row[3])


def _session(row) -> Optional[Session]:
    return None if row is None else Session(row[0], row[1], row[2], bool(row[3]))


def _request(row) -> Optional[MappingRequest]:
    return None if row is None else MappingRequest(*row)


def _challenge(row) -> Optional[MappingChallenge]:
    return None if row is None else MappingChallenge(*row)


class StorageTx:
    """The reads and writes of one transaction (Storage.transaction) or snapshot (Storage.read)."""

    def __init__(self, conn: sqlite3.Connection):
        self._db = conn

    @contextlib.contextmanager
    def savepoint(self):
        self._db.execute("SAVEPOINT part")
        try:
            yield
        except BaseException:
            self._db.execute("ROLLBACK TO part")
            self._db.execute("RELEASE part")
            raise
        self._db.execute("RELEASE part")

    def get_meta(self, key):
        row = self._db.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return None if row is None else row[0]

    def set_meta(self, key, value):
        self._db.execute("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)", (key, value))

    def add_user(self, user_id, email, password_hash, now):
        self._db.execute("INSERT INTO users(user_id, email, password_hash, created) VALUES (?,?,?,?)",
                         (user_id, email, password_hash, now))

    def user_by_email(self, email):
        return _user(self._db.execute(
            "SELECT user_id, email, password_hash, created FROM users WHERE email=?", (email,)).fetchone())

    def user_by_id(self, user_id):
        return _user(self._db.execute(
            "SELECT user_id, email, password_hash, created FROM users WHERE user_id=?", (user_id,)).fetchone())

    def list_users(self):
        rows = self._db.execute("SELECT user_id, email, password_hash, created FROM users ORDER BY email")
        return [_user(r) for r in rows]

    def add_session(self, session_id, user_id, refresh_hash, now):
        self._db.execute("INSERT INTO sessions(session_id, user_id, refresh_hash, created) VALUES (?,?,?,?)",
                         (session_id, user_id, refresh_hash, now))

    def session_by_id(self, session_id):
        return _session(self._db.execute(
            "SELECT session_id, user_id, created, revoked FROM sessions WHERE session_id=?",
            (session_id,)).fetchone())

    def session_by_refresh_hash(self, refresh_hash):
        return _session(self._db.execute(
            "SELECT session_id, user_id, created, revoked FROM sessions WHERE refresh_hash=?",
            (refresh_hash,)).fetchone())

    def revoke_session(self, session_id):
        self._db.execute("UPDATE sessions SET revoked=1 WHERE session_id=?", (session_id,))

    def revoke_user_sessions(self, user_id):
        return self._db.execute("UPDATE sessions SET revoked=1 WHERE user_id=? AND revoked=0",
                                (user_id,)).rowcount

    def add_user_node(self, user_id, node_id, now):
        cur = self._db.execute("INSERT OR IGNORE INTO user_nodes(user_id, node_id, added) VALUES (?,?,?)",
                               (user_id, node_id, now))
        return cur.rowcount == 1

    def remove_user_node(self, user_id, node_id):
        return self._db.execute("DELETE FROM user_nodes WHERE user_id=? AND node_id=?",
                                (user_id, node_id)).rowcount == 1

    def remove_node_users(self, node_id):
        users = [r[0] for r in self._db.execute("SELECT user_id FROM user_nodes WHERE node_id=?", (node_id,))]
        self._db.execute("DELETE FROM user_nodes WHERE node_id=?", (node_id,))
        return users

    def user_has_node(self, user_id, node_id):
        return self._db.execute("SELECT 1 FROM user_nodes WHERE user_id=? AND node_id=?",
                                (user_id, node_id)).fetchone() is not None

    def user_nodes_page(self, user_id, start_id, limit):
        if start_id is None:
            rows = self._db.execute("SELECT node_id FROM user_nodes WHERE user_id=? ORDER BY node_id LIMIT ?",
                                    (user_id, limit))
        else:
            rows = self._db.execute(
                "SELECT node_id FROM user_nodes WHERE user_id=? AND node_id>=? ORDER BY node_id LIMIT ?",
                (user_id, start_id, limit))
        return [r[0] for r in rows]

    def count_user_nodes(self, user_id):
        return self._db.execute("SELECT COUNT(*) FROM user_nodes WHERE user_id=?", (user_id,)).fetchone()[0]

    _REQ_COLS = "request_id, user_id, node_id, secret_key, operation, status, created, updated"

    def add_mapping_request(self, req):
        self._db.execute(f"INSERT INTO mapping_requests({self._REQ_COLS}) VALUES (?,?,?,?,?,?,?,?)",
                         (req.request_id, req.user_id, req.node_id, req.secret_key, req.operation,
                          req.status, req.created, req.updated))

    def mapping_request(self, request_id):
        return _request(self._db.execute(
            f"SELECT {self._REQ_COLS} FROM mapping_requests WHERE request_id=?", (request_id,)).fetchone())

    def requested_mappings_for_node(self, node_id):
        rows = self._db.execute(
            f"SELECT {self._REQ_COLS} FROM mapping_requests WHERE node_id=? AND status='requested' "
            "ORDER BY created", (node_id,))
        return [_request(r) for r in rows]

    def set_request_status(self, request_id, status, now):
        self._db.execute("UPDATE mapping_requests SET status=?, updated=? WHERE request_id=?",
                         (status, now, request_id))

    def add_node_report(self, node_id, user_id, secret_key, reset, now):
        cur = self._db.execute(
            "INSERT INTO node_reports(node_id, user_id, secret_key, reset, received) VALUES (?,?,?,?,?)",
            (node_id, user_id, secret_key, int(reset), now))
        return cur.lastrowid

    def node_reports_since(self, node_id, since):
        rows = self._db.execute(
            "SELECT report_id, node_id, user_id, secret_key, reset, received FROM node_reports "
            "WHERE node_id=? AND received>=? ORDER BY received", (node_id, since))
        return [NodeReport(r[0], r[1], r[2], r[3], bool(r[4]), r[5]) for r in rows]

    def has_node_report(self, node_id, user_id, secret_key):
        return self._db.execute(
            "SELECT 1 FROM node_reports WHERE node_id=? AND user_id=? AND secret_key=?",
            (node_id, user_id, secret_key)).fetchone() is not None

    def prune_node_reports(self, before):
        return self._db.execute("DELETE FROM node_reports WHERE received<?", (before,)).rowcount

    _CHALLENGE_COLS = "request_id, user_id, challenge, status, node_id, created, expires, updated"

    def add_challenge(self, challenge):
        self._db.execute(f"INSERT INTO mapping_challenges({self._CHALLENGE_COLS}) VALUES (?,?,?,?,?,?,?,?)",
                         (challenge.request_id, challenge.user_id, challenge.challenge, challenge.status,
                          challenge.node_id, challenge.created, challenge.expires, challenge.updated))

    def challenge(self, request_id):
        return _challenge(self._db.execute(
            f"SELECT {self._CHALLENGE_COLS} FROM mapping_challenges WHERE request_id=?", (request_id,)).fetchone())

    def settle_challenge(self, request_id, status, node_id, now):
        return self._db.execute(
            "UPDATE mapping_challenges SET status=?, node_id=?, updated=? WHERE request_id=? AND status='requested'",
            (status, node_id, now, request_id)).rowcount == 1

    def count_open_challenges(self, user_id, now):
        return self._db.execute(
            "SELECT COUNT(*) FROM mapping_challenges WHERE user_id=? AND status='requested' AND expires>=?",
            (user_id, now)).fetchone()[0]

    def prune_challenges(self, before):
        return self._db.execute("DELETE FROM mapping_challenges WHERE expires<? AND status!='confirmed'",
                                (before,)).rowcount

    def add_login_failure(self, key, now):
        self._db.execute("INSERT INTO login_failures(key, at) VALUES (?,?)", (key, now))

    def login_failures_since(self, key, since):
        rows = self._db.execute("SELECT at FROM login_failures WHERE key=? AND at>=? ORDER BY at", (key, since))
        return [r[0] for r in rows]

    def clear_login_failures(self, key):
        self._db.execute("DELETE FROM login_failures WHERE key=?", (key,))

    def prune_login_failures(self, before):
        return self._db.execute("DELETE FROM login_failures WHERE at<?", (before,)).rowcount


class Storage:
    """SQLite file in WAL mode; per thread one connection for writing and one for reading (query_only);
    schema created on first use."""

    def __init__(self, path: str | Path, busy_timeout_s: float = 10.0):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._busy_timeout_s = busy_timeout_s
        self._local = threading.local()
        self._all: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        # writers of this process queue here, then on the flock that other processes see too (an
        # flock belongs to the open file, so threads sharing this descriptor would not exclude each other)
        self._write_lock = threading.Lock()
        self._write_lock_fd = os.open(self.path.with_name(self.path.name + ".write-lock"), os.O_RDWR | os.O_CREAT, 0o600)
        # append-only: its size is the revocation epoch (one stat() per check, no database read)
        self._revocations_path = self.path.with_name(self.path.name + ".revocations")
        self._revocations_path.touch(mode=0o600, exist_ok=True)
        conn = self._conn()
        mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if mode.lower() != "wal":
            raise RuntimeError(f"SQLite at {self.path} refused WAL mode (got {mode!r})")
        conn.execute("BEGIN IMMEDIATE")  # two processes starting together create the schema once
        try:
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    conn.execute(statement)
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
        with self.transaction() as tx:
            version = tx.get_meta("schema_version")
            if version is None:
                tx.set_meta("schema_version", str(SCHEMA_VERSION))
            elif int(version) != SCHEMA_VERSION:
                raise RuntimeError(f"{self.path}: schema version {version}, this code knows {SCHEMA_VERSION}")

    def _conn(self, purpose: str = "conn") -> sqlite3.Connection:
        conn = getattr(self._local, purpose, None)
        if conn is None:
            # autocommit mode (isolation_level=None): transactions are explicit BEGIN/COMMIT below
            conn = sqlite3.connect(self.path, timeout=self._busy_timeout_s, isolation_level=None,
                                   check_same_thread=False)
            conn.execute("PRAGMA foreign_keys=ON")
            conn.execute("PRAGMA synchronous=FULL")  # committed == on disk before we answer
            if purpose == "reader":
                conn.execute("PRAGMA query_only=ON")  # a write slipped into read() fails loudly
            setattr(self._local, purpose, conn)
            with self._lock:
                self._all.append(conn)
        return conn

    @contextlib.contextmanager
    def transaction(self) -> Iterator[StorageTx]:
        conn = self._conn()
        with self._write_lock:
            fcntl.flock(self._write_lock_fd, fcntl.LOCK_EX)
            try:
                conn.execute("BEGIN IMMEDIATE")  # still needed: a writer without our lock file (sqlite3 CLI)
                try:
                    yield StorageTx(conn)
                except BaseException:
                    conn.execute("ROLLBACK")
                    raise
                else:
                    conn.execute("COMMIT")
            finally:
                fcntl.flock(self._write_lock_fd, fcntl.LOCK_UN)

    @contextlib.contextmanager
    def read(self) -> Iterator[StorageTx]:
        conn = self._conn("reader")
        conn.execute("BEGIN")  # deferred: a WAL read snapshot from the first SELECT on, no write lock
        try:
            yield StorageTx(conn)
        finally:
            conn.execute("COMMIT")  # ends the snapshot, so the WAL can be checkpointed past it

    def revocation_epoch(self) -> int:
        return os.stat(self._revocations_path).st_size

    def note_revocation(self) -> None:
        fd = os.open(self._revocations_path, os.O_WRONLY | os.O_APPEND)
        try:
            os.write(fd, b".")
        finally:
            os.close(fd)

    def deployment_secret(self) -> bytes:
        """The HMAC key for tokens: made once per database, shared by every process using it."""
        with self.transaction() as tx:
            value = tx.get_meta("token_secret")
            if value is None:
                value = secrets.token_hex(32)
                tx.set_meta("token_secret", value)
            return bytes.fromhex(value)

    def close(self) -> None:
        with self._lock:
            for conn in self._all:
                try:
                    conn.close()
                except sqlite3.Error:  # closing from another thread than the creator is best effort
                    pass
            self._all.clear()
        self._local = threading.local()
        if self._write_lock_fd >= 0:
            os.close(self._write_lock_fd)
            self._write_lock_fd = -1


def open_storage(url_or_path: str | Path) -> Storage:
    """A Storage for a path (SQLite) or a URL; only sqlite:///path is implemented."""
    text = str(url_or_path)
    if text.startswith("sqlite:///"):
        return Storage(text[len("sqlite:///"):])
    if "://" in text:
        raise ValueError(f"unsupported database URL {text!r} (only a file path or sqlite:///path)")
    return Storage(text)


def now() -> float:
    return time.time()
