"""The auditor's local store: the checkpoints it accepted and its mirror of the hub's log.

One SQLite file (``audit.sqlite3`` in the auditor's home), stdlib ``sqlite3`` like the
office's store (:mod:`nodes.store`): every statement is local and fast.

* ``checkpoints`` -- every checkpoint this auditor verified (log signature, consistency
  with the one before), newest by size: the auditor's memory, what a forked log must be
  consistent with.
* ``entries`` -- the mirror: entry ``i`` of the log for every ``i`` below ``mirror_size``,
  each one proven part of a signed tree (see :mod:`nodes.auditor`), with what the report
  needs indexed (kind, time, packet id, organ) and, for receipts, whether the office's
  signature verified against the signer's *logged* directory entry.
* ``directory`` -- the ``directory`` events of the mirror, their entries verified against
  the pinned authority key: the directory as the log tells it.
* ``changes`` -- key-transparency changes found while mirroring (new, rotated, revoked
  keys, merges), for ``monitor`` to report once.
* ``alarms`` -- every alarm raised, with its evidence (both checkpoints of a fork ...).
* ``meta`` -- small values: the mirror's size and Merkle frontier, the log's origin.

A mirror page is written in one transaction together with the new frontier, so the mirror
always holds exactly the entries its frontier hashes.
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

from protocol.codec import decode, encode
from protocol.merkle import Frontier

from .errors import NodeError

SCHEMA: Final[Sequence[str]] = (
    """
    CREATE TABLE meta (key TEXT PRIMARY KEY, value BLOB NOT NULL);

    CREATE TABLE checkpoints (
        size INTEGER PRIMARY KEY,
        root BLOB NOT NULL,
        note BLOB NOT NULL,
        seen_at INTEGER NOT NULL
    );

    CREATE TABLE entries (
        idx INTEGER PRIMARY KEY,
        data BLOB NOT NULL,
        kind TEXT NOT NULL,
        at INTEGER NOT NULL,
        packet_id BLOB,
        organ TEXT,
        receipt_ok INTEGER,
        receipt_error TEXT
    );
    CREATE INDEX entries_packet ON entries(packet_id, idx);
    CREATE INDEX entries_kind_at ON entries(kind, at);

    CREATE TABLE directory (
        idx INTEGER PRIMARY KEY,
        organ TEXT NOT NULL,
        serial INTEGER NOT NULL,
        action TEXT NOT NULL,
        digest BLOB NOT NULL,
        entry BLOB NOT NULL
    );
    CREATE INDEX directory_organ ON directory(organ, idx);

    CREATE TABLE changes (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        idx INTEGER NOT NULL,
        organ TEXT NOT NULL,
        doc TEXT NOT NULL,
        reported INTEGER NOT NULL DEFAULT 0
    );

    CREATE TABLE alarms (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        at INTEGER NOT NULL,
        code TEXT NOT NULL,
        detail TEXT NOT NULL,
        doc TEXT NOT NULL
    );
    """,
)

META_ORIGIN: Final = "origin"
META_MIRROR_SIZE: Final = "mirror_size"
META_FRONTIER: Final = "mirror_frontier"
META_ACKNOWLEDGED: Final = "alarms_acknowledged"


@dataclass(frozen=True, slots=True)
class StoredCheckpoint:
    size: int
    root: bytes
    note: bytes
    seen_at: int


class AuditStore:
    """The auditor's SQLite file.  ``AuditStore.open(path)``; ``":memory:"`` for scratch."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    @classmethod
    def open(cls, path: Path | str) -> AuditStore:
        conn = sqlite3.connect(str(path), timeout=30, isolation_level=None)
        conn.row_factory = sqlite3.Row
        if str(path) != ":memory:":
            conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA foreign_keys=ON")
        store = cls(conn)
        store._migrate()
        return store

    def close(self) -> None:
        self.conn.close()

    def _migrate(self) -> None:
        version = int(self.conn.execute("PRAGMA user_version").fetchone()[0])
        if version > len(SCHEMA):
            raise NodeError("store_too_new", "the audit store was written by a newer version")
        for n in range(version, len(SCHEMA)):
            with self.transaction():
                for statement in SCHEMA[n].split(";"):
                    if statement.strip():
                        self.conn.execute(statement)
                self.conn.execute(f"PRAGMA user_version={n + 1}")

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction (nested calls join the outer one)."""
        if self.conn.in_transaction:
            yield self.conn
            return
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            yield self.conn
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        self.conn.execute("COMMIT")

    # --- meta --------------------------------------------------------------------------

    def get_meta(self, key: str) -> bytes | None:
        row = self.conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else bytes(row[0])

    def set_meta(self, key: str, value: bytes) -> None:
        self.conn.execute(
            "INSERT INTO meta(key, value) VALUES (?, ?) "
            "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            (key, value),
        )

    # --- checkpoints -------------------------------------------------------------------

    def latest_checkpoint(self) -> StoredCheckpoint | None:
        row = self.conn.execute(
            "SELECT size, root, note, seen_at FROM checkpoints ORDER BY size DESC LIMIT 1"
        ).fetchone()
        return (
            None if row is None else StoredCheckpoint(row[0], bytes(row[1]), bytes(row[2]), row[3])
        )

    def checkpoint(self, size: int) -> StoredCheckpoint | None:
        row = self.conn.execute(
            "SELECT size, root, note, seen_at FROM checkpoints WHERE size = ?", (size,)
        ).fetchone()
        return (
            None if row is None else StoredCheckpoint(row[0], bytes(row[1]), bytes(row[2]), row[3])
        )

    def checkpoints_between(self, low: int, high: int) -> list[StoredCheckpoint]:
        rows = self.conn.execute(
            "SELECT size, root, note, seen_at FROM checkpoints WHERE size > ? AND size <= ? "
            "ORDER BY size",
            (low, high),
        ).fetchall()
        return [StoredCheckpoint(r[0], bytes(r[1]), bytes(r[2]), r[3]) for r in rows]

    def add_checkpoint(self, size: int, root: bytes, note: bytes) -> None:
        self.conn.execute(
            "INSERT INTO checkpoints(size, root, note, seen_at) VALUES (?, ?, ?, ?) "
            "ON CONFLICT(size) DO NOTHING",
            (size, root, note, int(time.time())),
        )

    # --- the mirror --------------------------------------------------------------------

    def mirror_size(self) -> int:
        raw = self.get_meta(META_MIRROR_SIZE)
        return 0 if raw is None else int(raw)

    def frontier(self) -> Frontier:
        raw = self.get_meta(META_FRONTIER)
        if raw is None:
            return Frontier()
        doc = decode(raw, max_size=1 << 16)
        return Frontier(int(doc["size"]), [bytes(h) for h in doc["hashes"]])

    def save_frontier(self, frontier: Frontier) -> None:
        self.set_meta(
            META_FRONTIER, encode({"size": frontier.size, "hashes": list(frontier.hashes)})
        )
        self.set_meta(META_MIRROR_SIZE, str(frontier.size).encode())

    def add_entry(
        self,
        idx: int,
        data: bytes,
        kind: str,
        at: int,
        packet_id: bytes | None,
        organ: str | None,
    ) -> None:
        self.conn.execute(
            "INSERT INTO entries(idx, data, kind, at, packet_id, organ) VALUES (?, ?, ?, ?, ?, ?)",
            (idx, data, kind, at, packet_id, organ),
        )

    def mark_receipt(self, idx: int, error: str | None) -> None:
        self.conn.execute(
            "UPDATE entries SET receipt_ok = ?, receipt_error = ? WHERE idx = ?",
            (0 if error else 1, error, idx),
        )

    def entry(self, idx: int) -> bytes | None:
        row = self.conn.execute("SELECT data FROM entries WHERE idx = ?", (idx,)).fetchone()
        return None if row is None else bytes(row[0])

    def entries_from(self, start: int, end: int) -> list[tuple[int, bytes]]:
        rows = self.conn.execute(
            "SELECT idx, data FROM entries WHERE idx >= ? AND idx < ? ORDER BY idx", (start, end)
        ).fetchall()
        return [(r[0], bytes(r[1])) for r in rows]

    def packet_events(
        self, packet_ids: Sequence[bytes], below: int | None = None
    ) -> list[sqlite3.Row]:
        """Mirrored entries naming any of ``packet_ids`` (below index ``below``), by index."""
        out: list[sqlite3.Row] = []
        limit = (1 << 62) if below is None else below
        for packet_id in dict.fromkeys(packet_ids):
            out.extend(
                self.conn.execute(
                    "SELECT idx, data, kind, receipt_ok, receipt_error FROM entries "
                    "WHERE packet_id = ? AND idx < ? ORDER BY idx",
                    (packet_id, limit),
                ).fetchall()
            )
        out.sort(key=lambda r: int(r["idx"]))
        return out

    def accepted_between(self, start: int, end: int) -> list[bytes]:
        """Packet ids of ``packet_accepted`` events timed in ``[start, end)``."""
        rows = self.conn.execute(
            "SELECT packet_id FROM entries WHERE kind = 'packet_accepted' AND at >= ? AND at < ? "
            "ORDER BY idx",
            (start, end),
        ).fetchall()
        return [bytes(r[0]) for r in rows if r[0] is not None]

    def sender_of(self, packet_id: bytes) -> str | None:
        row = self.conn.execute(
            "SELECT organ FROM entries WHERE packet_id = ? AND kind = 'packet_accepted' "
            "ORDER BY idx LIMIT 1",
            (packet_id,),
        ).fetchone()
        return None if row is None else str(row[0])

    def failed_receipts(self) -> list[sqlite3.Row]:
        return self.conn.execute(
            "SELECT idx, organ, packet_id, receipt_error FROM entries WHERE receipt_ok = 0 "
            "ORDER BY idx"
        ).fetchall()

    def kind_counts(self) -> dict[str, int]:
        rows = self.conn.execute("SELECT kind, count(*) FROM entries GROUP BY kind").fetchall()
        return {str(r[0]): int(r[1]) for r in rows}

    # --- the directory as logged --------------------------------------------------------

    def add_directory(
        self, idx: int, organ: str, serial: int, action: str, digest: bytes, entry: bytes
    ) -> None:
        self.conn.execute(
            "INSERT INTO directory(idx, organ, serial, action, digest, entry) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            (idx, organ, serial, action, digest, entry),
        )

    def directory_before(self, organ: str, idx: int) -> sqlite3.Row | None:
        """The organ's newest logged entry at an index below ``idx``."""
        row: sqlite3.Row | None = self.conn.execute(
            "SELECT idx, serial, digest, entry FROM directory WHERE organ = ? AND idx < ? "
            "ORDER BY idx DESC LIMIT 1",
            (organ, idx),
        ).fetchone()
        return row

    def directory_organs(self) -> list[str]:
        return [str(r[0]) for r in self.conn.execute("SELECT DISTINCT organ FROM directory")]

    def directory_count(self) -> int:
        return int(self.conn.execute("SELECT count(*) FROM directory").fetchone()[0])

    # --- changes and alarms -------------------------------------------------------------

    def add_change(self, idx: int, organ: str, doc: dict[str, Any]) -> None:
        self.conn.execute(
            "INSERT INTO changes(idx, organ, doc) VALUES (?, ?, ?)",
            (idx, organ, json.dumps(doc, ensure_ascii=False)),
        )

    def unreported_changes(self) -> list[dict[str, Any]]:
        rows = self.conn.execute(
            "SELECT id, idx, doc FROM changes WHERE reported = 0 ORDER BY id"
        ).fetchall()
        out = []
        for row in rows:
            doc = json.loads(row["doc"])
            doc["index"] = int(row["idx"])
            out.append(doc)
        if rows:
            self.conn.execute(
                "UPDATE changes SET reported = 1 WHERE id <= ?", (int(rows[-1]["id"]),)
            )
        return out

    def add_alarm(self, code: str, detail: str, doc: dict[str, Any]) -> None:
        self.conn.execute(
            "INSERT INTO alarms(at, code, detail, doc) VALUES (?, ?, ?, ?)",
            (int(time.time()), code, detail, json.dumps(doc, ensure_ascii=False, default=str)),
        )

    def alarms(self, limit: int = 50) -> list[dict[str, Any]]:
        """The alarms not acknowledged yet, newest first."""
        seen = int(self.get_meta(META_ACKNOWLEDGED) or b"0")
        rows = self.conn.execute(
            "SELECT at, code, detail FROM alarms WHERE id > ? ORDER BY id DESC LIMIT ?",
            (seen, limit),
        ).fetchall()
        return [{"at": r[0], "code": r[1], "detail": r[2]} for r in rows]

    def acknowledge_alarms(self) -> int:
        """Mark every alarm so far as seen (they stay in the table); how many were new."""
        seen = int(self.get_meta(META_ACKNOWLEDGED) or b"0")
        last = int(self.conn.execute("SELECT coalesce(max(id), 0) FROM alarms").fetchone()[0])
        self.set_meta(META_ACKNOWLEDGED, str(last).encode())
        return int(
            self.conn.execute("SELECT count(*) FROM alarms WHERE id > ?", (seen,)).fetchone()[0]
        )
