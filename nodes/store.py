"""The office's local store: one SQLite file with a versioned schema.

What it keeps:

* ``directory`` -- signed directory entries as the hub served them (re-verified against
  the pinned authority key every time they are used; the cache only saves a round trip
  and lets a clerk seal while the hub is unreachable);
* ``sent`` -- every packet the office sealed, with its outbox state (``queued``,
  ``awaiting_body``, ``accepted``, ``failed``), attempts and next attempt time, the
  envelope bytes and the sealed body's path in the spool, and the hub's ``accepted``
  receipt; ``deliveries`` -- each recipient's state of a sent packet;
* ``receipts`` -- office and hub receipts, signed bytes kept verbatim: those relayed to
  us (``direction='in'``, verified or not) and those we signed (``'out'``, queued until
  the hub took them);
* ``inbox`` -- received packets: metadata, where the files are, the delivery state and
  its history, the refusal code of a packet that failed verification;
* ``registers`` -- the incoming and outgoing registers (numbers unique per period and
  type, see :mod:`nodes.registers`);
* ``meta`` -- small values: the last checkpoint of the hub's log, the log's origin.

stdlib ``sqlite3``, not an async driver: every statement is a local, millisecond
operation and the node is one process with one event loop; what is slow (network, opening
bodies) happens outside the store.  WAL mode and a busy timeout let the daemon and a
clerk's one-shot command use the file at the same time.

Schema changes are new entries in :data:`MIGRATIONS`; ``PRAGMA user_version`` records
how many have been applied.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from .errors import NodeError

MIGRATIONS: Final[Sequence[str]] = (
    # 1: the first schema
    """
    CREATE TABLE meta (key TEXT PRIMARY KEY, value BLOB NOT NULL);

    CREATE TABLE directory (
        organ TEXT PRIMARY KEY,
        serial INTEGER NOT NULL,
        entry BLOB NOT NULL,
        parent TEXT,
        name TEXT NOT NULL,
        role TEXT NOT NULL,
        fetched_at INTEGER NOT NULL
    );
    CREATE INDEX directory_parent ON directory(parent);

    CREATE TABLE sent (
        packet_id TEXT PRIMARY KEY,
        created_at INTEGER NOT NULL,
        kind TEXT NOT NULL,
        recipients TEXT NOT NULL,
        subject TEXT NOT NULL,
        doc_type TEXT NOT NULL,
        number TEXT,
        notation TEXT,
        signer TEXT,
        issued TEXT,
        urgency INTEGER NOT NULL,
        secrecy INTEGER NOT NULL,
        due TEXT,
        in_reply_to TEXT,
        files TEXT NOT NULL,
        archive TEXT NOT NULL,
        envelope BLOB NOT NULL,
        envelope_digest BLOB NOT NULL,
        body_path TEXT,
        body_size INTEGER NOT NULL,
        state TEXT NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        next_attempt INTEGER NOT NULL DEFAULT 0,
        reseals INTEGER NOT NULL DEFAULT 0,
        error_code TEXT,
        error_detail TEXT,
        accepted_at INTEGER,
        log_index INTEGER,
        hub_receipt BLOB,
        source TEXT NOT NULL DEFAULT 'cli',
        request TEXT NOT NULL DEFAULT '{}'
    );
    CREATE INDEX sent_outbox ON sent(state, next_attempt);

    CREATE TABLE deliveries (
        packet_id TEXT NOT NULL,
        organ TEXT NOT NULL,
        state TEXT NOT NULL,
        fetched_at INTEGER,
        updated_at INTEGER NOT NULL,
        PRIMARY KEY (packet_id, organ)
    );

    CREATE TABLE receipts (
        digest BLOB PRIMARY KEY,
        packet_id TEXT NOT NULL,
        organ TEXT NOT NULL,
        signer TEXT NOT NULL,
        status TEXT NOT NULL,
        at INTEGER NOT NULL,
        reason TEXT,
        details TEXT NOT NULL DEFAULT '{}',
        raw BLOB NOT NULL,
        source TEXT NOT NULL,
        direction TEXT NOT NULL,
        state TEXT NOT NULL,
        error_code TEXT,
        error_detail TEXT,
        created_at INTEGER NOT NULL
    );
    CREATE INDEX receipts_packet ON receipts(packet_id);
    CREATE INDEX receipts_queue ON receipts(direction, state);

    CREATE TABLE inbox (
        packet_id TEXT PRIMARY KEY,
        received_at INTEGER NOT NULL,
        sender TEXT NOT NULL,
        sender_name TEXT,
        kind TEXT,
        urgency INTEGER NOT NULL DEFAULT 0,
        secrecy INTEGER NOT NULL DEFAULT 0,
        due TEXT,
        in_reply_to TEXT,
        subject TEXT,
        doc_type TEXT,
        number TEXT,
        notation TEXT,
        signer TEXT,
        issued TEXT,
        place TEXT,
        notes TEXT,
        files TEXT NOT NULL DEFAULT '[]',
        folder TEXT,
        envelope BLOB,
        envelope_digest BLOB,
        state TEXT NOT NULL,
        history TEXT NOT NULL DEFAULT '[]',
        verified INTEGER NOT NULL,
        error_code TEXT,
        error_detail TEXT,
        incoming_number INTEGER,
        incoming_year INTEGER,
        registered_at INTEGER,
        assignee TEXT,
        recall_reason TEXT
    );

    CREATE TABLE registers (
        id INTEGER PRIMARY KEY,
        kind TEXT NOT NULL,
        period TEXT NOT NULL,
        doc_type TEXT NOT NULL,
        number INTEGER NOT NULL,
        packet_id TEXT NOT NULL,
        year INTEGER NOT NULL,
        day TEXT NOT NULL,
        created_at INTEGER NOT NULL,
        UNIQUE (kind, period, doc_type, number)
    );
    CREATE UNIQUE INDEX registers_packet ON registers(kind, packet_id);
    """,
)

#: Outbox states of a sent packet.
QUEUED: Final = "queued"
AWAITING_BODY: Final = "awaiting_body"
ACCEPTED: Final = "accepted"
FAILED: Final = "failed"
OUTBOX_STATES: Final = (QUEUED, AWAITING_BODY)


@dataclass(frozen=True, slots=True)
class CachedEntry:
    organ: str
    serial: int
    entry: bytes
    fetched_at: int


def _now() -> int:
    return int(time.time())


class Store:
    """The node's SQLite database; open with :meth:`open`, close with :meth:`close`."""

    def __init__(self, conn: sqlite3.Connection, path: Path) -> None:
        self._conn = conn
        self.path = path
        self._depth = 0

    @classmethod
    def open(cls, path: Path) -> Store:
        path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(path, timeout=60.0, isolation_level=None)
        conn.row_factory = sqlite3.Row
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("PRAGMA foreign_keys=ON")
        store = cls(conn, path)
        store._migrate()
        with contextlib.suppress(OSError):
            path.chmod(0o600)
        return store

    def close(self) -> None:
        self._conn.close()

    def _migrate(self) -> None:
        with self.transaction():
            version = int(self._conn.execute("PRAGMA user_version").fetchone()[0])
            if version > len(MIGRATIONS):
                raise NodeError(
                    "store_too_new",
                    f"{self.path} has schema {version}; this node knows {len(MIGRATIONS)}",
                )
            for number in range(version, len(MIGRATIONS)):
                for statement in MIGRATIONS[number].split(";"):
                    if statement.strip():
                        self._conn.execute(statement)
                self._conn.execute(f"PRAGMA user_version = {number + 1}")

    @property
    def schema_version(self) -> int:
        return int(self._conn.execute("PRAGMA user_version").fetchone()[0])

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction (``BEGIN IMMEDIATE``); nested calls join the outer one."""
        if self._depth:
            self._depth += 1
            try:
                yield self._conn
            finally:
                self._depth -= 1
            return
        self._conn.execute("BEGIN IMMEDIATE")
        self._depth = 1
        try:
            yield self._conn
        except BaseException:
            self._conn.execute("ROLLBACK")
            raise
        else:
            self._conn.execute("COMMIT")
        finally:
            self._depth = 0

    def _update(self, table: str, key: str, value: str, fields: dict[str, Any]) -> None:
        if not fields:
            return
        cols = ", ".join(f"{name} = ?" for name in fields)
        with self.transaction() as conn:
            conn.execute(f"UPDATE {table} SET {cols} WHERE {key} = ?", [*fields.values(), value])  # noqa: S608 - names are ours

    # --- meta ---------------------------------------------------------------------------

    def get_meta(self, key: str) -> bytes | None:
        row = self._conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else bytes(row[0])

    def set_meta(self, key: str, value: bytes) -> None:
        with self.transaction() as conn:
            conn.execute(
                "INSERT INTO meta(key, value) VALUES (?, ?) "
                "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                (key, value),
            )

    # --- directory cache ----------------------------------------------------------------

    def put_entry(
        self, organ: str, serial: int, entry: bytes, *, parent: str | None, name: str, role: str
    ) -> bool:
        """Cache a verified entry unless a newer serial is cached; True if stored."""
        with self.transaction() as conn:
            row = conn.execute("SELECT serial FROM directory WHERE organ = ?", (organ,)).fetchone()
            if row is not None and int(row[0]) > serial:
                return False
            conn.execute(
                "INSERT INTO directory(organ, serial, entry, parent, name, role, fetched_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT(organ) DO UPDATE SET "
                "serial = excluded.serial, entry = excluded.entry, parent = excluded.parent, "
                "name = excluded.name, role = excluded.role, fetched_at = excluded.fetched_at",
                (organ, serial, entry, parent, name, role, _now()),
            )
        return True

    def get_entry(self, organ: str) -> CachedEntry | None:
        row = self._conn.execute(
            "SELECT organ, serial, entry, fetched_at FROM directory WHERE organ = ?", (organ,)
        ).fetchone()
        if row is None:
            return None
        return CachedEntry(row[0], int(row[1]), bytes(row[2]), int(row[3]))

    def cached_children(self, organ: str) -> list[str]:
        rows = self._conn.execute(
            "SELECT organ FROM directory WHERE parent = ? ORDER BY organ", (organ,)
        ).fetchall()
        return [r[0] for r in rows]

    def organ_name(self, organ: str) -> str | None:
        row = self._conn.execute("SELECT name FROM directory WHERE organ = ?", (organ,)).fetchone()
        return None if row is None else str(row[0])

    # --- sent packets and the outbox ------------------------------------------------------

    def insert_sent(self, record: dict[str, Any]) -> None:
        cols = ", ".join(record)
        marks = ", ".join("?" for _ in record)
        with self.transaction() as conn:
            conn.execute(f"INSERT INTO sent({cols}) VALUES ({marks})", list(record.values()))  # noqa: S608

    def update_sent(self, packet_id: str, **fields: Any) -> None:
        self._update("sent", "packet_id", packet_id, fields)

    def get_sent(self, packet_id: str) -> sqlite3.Row | None:
        row: sqlite3.Row | None = self._conn.execute(
            "SELECT * FROM sent WHERE packet_id = ?", (packet_id,)
        ).fetchone()
        return row

    def list_sent(self, limit: int = 200) -> list[sqlite3.Row]:
        return list(
            self._conn.execute(
                "SELECT * FROM sent ORDER BY created_at DESC, packet_id DESC LIMIT ?", (limit,)
            ).fetchall()
        )

    def outbox_due(self, now: int | None = None, *, all_due: bool = False) -> list[sqlite3.Row]:
        """Packets to submit now (or every queued one with ``all_due``), oldest first."""
        at = _now() if now is None else now
        query = "SELECT * FROM sent WHERE state IN (?, ?)"
        args: list[Any] = [QUEUED, AWAITING_BODY]
        if not all_due:
            query += " AND next_attempt <= ?"
            args.append(at)
        return list(
            self._conn.execute(query + " ORDER BY urgency DESC, created_at", args).fetchall()
        )

    def accepted_without_receipt(self, limit: int = 20) -> list[sqlite3.Row]:
        return list(
            self._conn.execute(
                "SELECT * FROM sent WHERE state = ? AND hub_receipt IS NULL "
                "ORDER BY accepted_at LIMIT ?",
                (ACCEPTED, limit),
            ).fetchall()
        )

    def outbox_count(self) -> int:
        row = self._conn.execute(
            "SELECT COUNT(*) FROM sent WHERE state IN (?, ?)", (QUEUED, AWAITING_BODY)
        ).fetchone()
        return int(row[0])

    # --- deliveries of sent packets --------------------------------------------------------

    def init_deliveries(self, packet_id: str, organs: Sequence[str], at: int) -> None:
        with self.transaction() as conn:
            conn.executemany(
                "INSERT OR IGNORE INTO deliveries(packet_id, organ, state, updated_at) "
                "VALUES (?, ?, 'pending', ?)",
                [(packet_id, organ, at) for organ in organs],
            )

    def set_delivery(
        self, packet_id: str, organ: str, state: str, *, fetched_at: int | None = None
    ) -> None:
        with self.transaction() as conn:
            conn.execute(
                "INSERT INTO deliveries(packet_id, organ, state, fetched_at, updated_at) "
                "VALUES (?, ?, ?, ?, ?) ON CONFLICT(packet_id, organ) DO UPDATE SET "
                "state = excluded.state, updated_at = excluded.updated_at, "
                "fetched_at = COALESCE(deliveries.fetched_at, excluded.fetched_at)",
                (packet_id, organ, state, fetched_at, _now()),
            )

    def deliveries(self, packet_id: str) -> list[sqlite3.Row]:
        return list(
            self._conn.execute(
                "SELECT * FROM deliveries WHERE packet_id = ? ORDER BY organ", (packet_id,)
            ).fetchall()
        )

    # --- receipts ----------------------------------------------------------------------------

    def add_receipt(self, record: dict[str, Any]) -> bool:
        """Store a receipt once (by the digest of its signed body); True if it is new."""
        record = {
            **record,
            "details": json.dumps(record.get("details") or {}, ensure_ascii=False),
            "created_at": record.get("created_at", _now()),
        }
        cols = ", ".join(record)
        marks = ", ".join("?" for _ in record)
        with self.transaction() as conn:
            cur = conn.execute(
                f"INSERT OR IGNORE INTO receipts({cols}) VALUES ({marks})",  # noqa: S608
                list(record.values()),
            )
            return cur.rowcount == 1

    def has_receipt(self, digest: bytes) -> bool:
        row = self._conn.execute("SELECT 1 FROM receipts WHERE digest = ?", (digest,)).fetchone()
        return row is not None

    def receipts_for(self, packet_id: str) -> list[sqlite3.Row]:
        return list(
            self._conn.execute(
                "SELECT * FROM receipts WHERE packet_id = ? ORDER BY at, created_at", (packet_id,)
            ).fetchall()
        )

    def queued_receipts(self, limit: int = 500) -> list[sqlite3.Row]:
        return list(
            self._conn.execute(
                "SELECT * FROM receipts WHERE direction = 'out' AND state = 'queued' "
                "ORDER BY created_at LIMIT ?",
                (limit,),
            ).fetchall()
        )

    def mark_receipt(
        self, digest: bytes, state: str, code: str | None = None, detail: str | None = None
    ) -> None:
        with self.transaction() as conn:
            conn.execute(
                "UPDATE receipts SET state = ?, error_code = ?, error_detail = ? WHERE digest = ?",
                (state, code, detail, digest),
            )

    # --- inbox ---------------------------------------------------------------------------------

    def insert_inbox(self, record: dict[str, Any]) -> None:
        cols = ", ".join(record)
        marks = ", ".join("?" for _ in record)
        with self.transaction() as conn:
            conn.execute(
                f"INSERT OR REPLACE INTO inbox({cols}) VALUES ({marks})",  # noqa: S608
                list(record.values()),
            )

    def update_inbox(self, packet_id: str, **fields: Any) -> None:
        self._update("inbox", "packet_id", packet_id, fields)

    def get_inbox(self, packet_id: str) -> sqlite3.Row | None:
        row: sqlite3.Row | None = self._conn.execute(
            "SELECT * FROM inbox WHERE packet_id = ?", (packet_id,)
        ).fetchone()
        return row

    def list_inbox(self, *, include_refused: bool = True, limit: int = 500) -> list[sqlite3.Row]:
        query = "SELECT * FROM inbox"
        if not include_refused:
            query += " WHERE verified = 1"
        return list(
            self._conn.execute(
                query + " ORDER BY received_at DESC, packet_id DESC LIMIT ?", (limit,)
            ).fetchall()
        )

    def resolve_id(self, text: str) -> str:
        """A full packet id from a unique prefix (as in ``git``), over inbox and sent."""
        wanted = text.strip().lower()
        if len(wanted) < 4:
            raise NodeError("packet_not_found", "give at least 4 characters of the packet id")
        found: set[str] = set()
        for table in ("inbox", "sent"):
            rows = self._conn.execute(
                f"SELECT packet_id FROM {table} WHERE packet_id LIKE ? OR "  # noqa: S608
                f"replace(packet_id, '-', '') LIKE ?",
                (wanted + "%", wanted.replace("-", "") + "%"),
            ).fetchall()
            found.update(r[0] for r in rows)
        if not found:
            raise NodeError("packet_not_found", f"no packet {text} in this office's store")
        if len(found) > 1:
            raise NodeError("packet_ambiguous", f"{text} matches {len(found)} packets")
        return found.pop()

    # --- registers ------------------------------------------------------------------------------

    def allocate_number(
        self,
        kind: str,
        period: str,
        doc_type: str,
        packet_id: str,
        *,
        year: int,
        day: str,
        number: int | None = None,
    ) -> int:
        """The next number of a register (or ``number``, if still free), recorded at once."""
        with self.transaction() as conn:
            existing = conn.execute(
                "SELECT number FROM registers WHERE kind = ? AND packet_id = ?", (kind, packet_id)
            ).fetchone()
            if existing is not None:
                return int(existing[0])
            if number is None:
                row = conn.execute(
                    "SELECT COALESCE(MAX(number), 0) FROM registers "
                    "WHERE kind = ? AND period = ? AND doc_type = ?",
                    (kind, period, doc_type),
                ).fetchone()
                number = int(row[0]) + 1
            try:
                conn.execute(
                    "INSERT INTO registers(kind, period, doc_type, number, packet_id, year, day, "
                    "created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (kind, period, doc_type, number, packet_id, year, day, _now()),
                )
            except sqlite3.IntegrityError:
                raise NodeError(
                    "register_number_taken",
                    f"number {number} is already in the {kind} register for {period}"
                    + (f" ({doc_type})" if doc_type else ""),
                ) from None
            return number

    def release_number(self, kind: str, packet_id: str) -> None:
        """Give a number back when sealing failed before the packet existed."""
        with self.transaction() as conn:
            conn.execute(
                "DELETE FROM registers WHERE kind = ? AND packet_id = ?", (kind, packet_id)
            )

    def register_entries(self, kind: str, year: int) -> list[sqlite3.Row]:
        table = "inbox" if kind == "in" else "sent"
        return list(
            self._conn.execute(
                f"SELECT r.number AS reg_number, r.period, r.day, p.* FROM registers r "  # noqa: S608
                f"JOIN {table} p ON p.packet_id = r.packet_id "
                "WHERE r.kind = ? AND r.year = ? ORDER BY r.period, r.doc_type, r.number",
                (kind, year),
            ).fetchall()
        )
