"""Tables of the audit log.

``log_pending`` is the queue that :func:`hub.auditlog.append_event` writes in the caller's
transaction.  The sequencer moves rows from it into ``log_entries`` (gap-free indexes from
0), writes the Merkle tree's stored hashes into ``log_hashes`` and signs a checkpoint into
``log_checkpoints`` -- all in one transaction, so the four tables always agree: a tree of
``n`` leaves has exactly entries ``0..n-1``, every stored hash of them, and a checkpoint of
size ``n`` whose root those hashes reproduce.  ``log_cosignatures`` holds the witnesses'
cosignature lines for stored checkpoints.

Every table is append-only in normal operation; nothing here is ever updated in place.
"""

from __future__ import annotations

from sqlalchemy import BigInteger, Index, Integer, LargeBinary, SmallInteger, Table, Text
from sqlalchemy.orm import Mapped, mapped_column

from ..db import Base

# SQLite only auto-increments an INTEGER PRIMARY KEY; PostgreSQL wants BIGINT.
BigId = BigInteger().with_variant(Integer(), "sqlite")


class LogPending(Base):
    """Events appended but not yet given an index by the sequencer."""

    __tablename__ = "log_pending"
    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    data: Mapped[bytes] = mapped_column(LargeBinary, nullable=False)
    #: The event's packet id when it has one, copied to ``log_entries`` for bundles.
    packet_id: Mapped[bytes | None] = mapped_column(LargeBinary(16), nullable=True)


class LogEntry(Base):
    """A sequenced entry: leaf ``idx`` of the Merkle tree."""

    __tablename__ = "log_entries"
    idx: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    data: Mapped[bytes] = mapped_column(LargeBinary, nullable=False)
    leaf_hash: Mapped[bytes] = mapped_column(LargeBinary(32), nullable=False)
    packet_id: Mapped[bytes | None] = mapped_column(LargeBinary(16), nullable=True)
    #: When the sequencer gave the entry its index (Unix seconds); the event's own time
    #: is inside ``data``.
    created_at: Mapped[int] = mapped_column(BigInteger, nullable=False)

    __table_args__ = (Index("ix_log_entries_packet_id", "packet_id", "idx"),)


class LogHash(Base):
    """A stored hash of the tree: the complete subtree ``(level, idx)`` (see protocol.merkle)."""

    __tablename__ = "log_hashes"
    level: Mapped[int] = mapped_column(SmallInteger, primary_key=True, autoincrement=False)
    idx: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    hash: Mapped[bytes] = mapped_column(LargeBinary(32), nullable=False)


class LogCheckpoint(Base):
    """A checkpoint the log signed: one per tree size, never two."""

    __tablename__ = "log_checkpoints"
    size: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    root: Mapped[bytes] = mapped_column(LargeBinary(32), nullable=False)
    #: The signed note exactly as signed (UTF-8), the log's signature line included.
    note: Mapped[str] = mapped_column(Text, nullable=False)
    created_at: Mapped[int] = mapped_column(BigInteger, nullable=False)


class LogCosignature(Base):
    """A witness's cosignature on a stored checkpoint: one per (checkpoint, witness key)."""

    __tablename__ = "log_cosignatures"
    size: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    witness: Mapped[str] = mapped_column(Text, primary_key=True)
    #: The 4-byte C2SP key ID, hex: a rotated witness key is a different row.
    key_hash: Mapped[str] = mapped_column(Text, primary_key=True)
    #: The organ that submitted it (its bearer token's organ).
    organ: Mapped[str] = mapped_column(Text, nullable=False)
    #: The cosignature's own timestamp (Unix seconds).
    timestamp: Mapped[int] = mapped_column(BigInteger, nullable=False)
    #: The whole signature line as it goes into the note, newline included.
    line: Mapped[str] = mapped_column(Text, nullable=False)
    created_at: Mapped[int] = mapped_column(BigInteger, nullable=False)


LOG_TABLES: tuple[Table, ...] = tuple(
    Base.metadata.tables[name]
    for name in ("log_pending", "log_entries", "log_hashes", "log_checkpoints", "log_cosignatures")
)
"""The audit log's tables, for ``metadata.create_all(tables=...)`` in tests and tools."""

__all__ = [
    "LOG_TABLES",
    "LogCheckpoint",
    "LogCosignature",
    "LogEntry",
    "LogHash",
    "LogPending",
]
