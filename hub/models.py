"""Tables of the hub (the audit log's own tables live in :mod:`hub.auditlog.models`).

Times are integer Unix seconds (UTC) on both back ends; ids and digests are raw bytes.

* ``organs``, ``organ_keys``, ``directory_history``: the directory.  The signed entry bytes
  are what nodes verify; the rows beside them are for queries.
* ``enrolment_tokens``, ``session_challenges``, ``session_tokens``: authentication.  Only
  SHA-256 hashes of tokens are stored, so a database dump grants no session.
* ``packets``, ``deliveries``, ``delivery_events``: what was submitted, one delivery per
  (packet, recipient) and its append-only history of signed receipts.
* ``mailbox``: what each organ has still to collect (until it acknowledges).
* ``hub_receipts_pending``: hub receipts waiting for the audit-log index of their event.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    SmallInteger,
    String,
)
from sqlalchemy.orm import Mapped, mapped_column

from .db import Base

# SQLite only auto-increments an INTEGER PRIMARY KEY; PostgreSQL wants BIGINT.
BigId = BigInteger().with_variant(Integer(), "sqlite")
Code = String(64)


class Organ(Base):
    """An organ of the tree, enrolled or not yet; ``entry`` is its current signed entry."""

    __tablename__ = "organs"
    code: Mapped[str] = mapped_column(Code, primary_key=True)
    name: Mapped[str] = mapped_column(String(512))
    role: Mapped[str] = mapped_column(String(16))
    level: Mapped[str] = mapped_column(String(32))
    parent: Mapped[str | None] = mapped_column(Code, index=True)
    email: Mapped[str | None] = mapped_column(String(254))
    #: Comma-separated: "http", "email" or "http,email".
    transports: Mapped[str] = mapped_column(String(32))
    valid_from: Mapped[int] = mapped_column(BigInteger)
    valid_until: Mapped[int | None] = mapped_column(BigInteger)
    successor: Mapped[str | None] = mapped_column(Code)
    serial: Mapped[int] = mapped_column(Integer, default=0)
    entry: Mapped[bytes | None] = mapped_column(LargeBinary)
    updated_at: Mapped[int] = mapped_column(BigInteger)


class OrganKey(Base):
    """A public key of an organ (``usage`` sign or enc), as listed in its entry."""

    __tablename__ = "organ_keys"
    kid: Mapped[bytes] = mapped_column(LargeBinary(32), primary_key=True)
    organ: Mapped[str] = mapped_column(ForeignKey("organs.code"), index=True)
    usage: Mapped[str] = mapped_column(String(8))
    alg: Mapped[str] = mapped_column(String(32))
    pub: Mapped[bytes] = mapped_column(LargeBinary)
    not_before: Mapped[int] = mapped_column(BigInteger)
    not_after: Mapped[int] = mapped_column(BigInteger)
    revoked_at: Mapped[int | None] = mapped_column(BigInteger)


class DirectoryHistory(Base):
    """Every entry the authority signed, by serial: key transparency for the organ."""

    __tablename__ = "directory_history"
    organ: Mapped[str] = mapped_column(ForeignKey("organs.code"), primary_key=True)
    serial: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    action: Mapped[str] = mapped_column(String(16))
    entry: Mapped[bytes] = mapped_column(LargeBinary)
    issued_at: Mapped[int] = mapped_column(BigInteger)


class EnrolmentToken(Base):
    __tablename__ = "enrolment_tokens"
    token_hash: Mapped[bytes] = mapped_column(LargeBinary(32), primary_key=True)
    organ: Mapped[str] = mapped_column(ForeignKey("organs.code"), index=True)
    created_at: Mapped[int] = mapped_column(BigInteger)
    expires_at: Mapped[int] = mapped_column(BigInteger)
    used_at: Mapped[int | None] = mapped_column(BigInteger)


class SessionChallenge(Base):
    """A challenge handed out and not yet used; consumed (deleted) by its first use."""

    __tablename__ = "session_challenges"
    challenge: Mapped[bytes] = mapped_column(LargeBinary(32), primary_key=True)
    organ: Mapped[str] = mapped_column(Code, index=True)
    expires_at: Mapped[int] = mapped_column(BigInteger, index=True)


class SessionToken(Base):
    """A bearer token (its SHA-256), bound to the organ and key that proved possession."""

    __tablename__ = "session_tokens"
    token_hash: Mapped[bytes] = mapped_column(LargeBinary(32), primary_key=True)
    organ: Mapped[str] = mapped_column(Code)
    kid: Mapped[bytes] = mapped_column(ForeignKey("organ_keys.kid"), index=True)
    role: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[int] = mapped_column(BigInteger)
    expires_at: Mapped[int] = mapped_column(BigInteger, index=True)


class Packet(Base):
    """A submitted envelope: ``awaiting_body`` until its body is stored, then ``accepted``.

    Only accepted packets are visible to anyone but their sender.
    """

    __tablename__ = "packets"
    id: Mapped[bytes] = mapped_column(LargeBinary(16), primary_key=True)
    sender: Mapped[str] = mapped_column(Code, index=True)
    state: Mapped[str] = mapped_column(String(16))
    envelope: Mapped[bytes] = mapped_column(LargeBinary)
    envelope_digest: Mapped[bytes] = mapped_column(LargeBinary(32))
    kind: Mapped[str] = mapped_column(String(16))
    urgency: Mapped[int] = mapped_column(SmallInteger)
    secrecy: Mapped[int] = mapped_column(SmallInteger)
    created_at: Mapped[int] = mapped_column(BigInteger)
    submitted_at: Mapped[int] = mapped_column(BigInteger)
    accepted_at: Mapped[int | None] = mapped_column(BigInteger)
    body_sha256: Mapped[bytes] = mapped_column(LargeBinary(32), index=True)
    body_size: Mapped[int] = mapped_column(BigInteger)
    target: Mapped[bytes | None] = mapped_column(LargeBinary(16))
    transport: Mapped[str] = mapped_column(String(8))
    #: The signed hub receipt ``accepted``, once the log has indexed the event.
    hub_receipt: Mapped[bytes | None] = mapped_column(LargeBinary)
    #: Set when retention removed the body from the blob store.
    body_deleted_at: Mapped[int | None] = mapped_column(BigInteger)


class DeliveryRow(Base):
    """The state of one packet at one recipient (see :class:`protocol.receipts.Delivery`)."""

    __tablename__ = "deliveries"
    packet_id: Mapped[bytes] = mapped_column(ForeignKey("packets.id"), primary_key=True)
    organ: Mapped[str] = mapped_column(Code, primary_key=True)
    state: Mapped[str] = mapped_column(String(16))
    fetched_at: Mapped[int | None] = mapped_column(BigInteger)
    updated_at: Mapped[int] = mapped_column(BigInteger)

    __table_args__ = (Index("ix_deliveries_organ", "organ", "packet_id"),)


class DeliveryEvent(Base):
    """One signed receipt of a delivery's history: an office's, or the hub's ``fetched``."""

    __tablename__ = "delivery_events"
    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    packet_id: Mapped[bytes] = mapped_column(ForeignKey("packets.id"))
    organ: Mapped[str] = mapped_column(Code)
    #: "office" or "hub".
    source: Mapped[str] = mapped_column(String(8))
    #: A status code ("01" ... "16") or "fetched".
    status: Mapped[str] = mapped_column(String(16))
    #: The time the receipt itself states.
    at: Mapped[int] = mapped_column(BigInteger)
    received_at: Mapped[int] = mapped_column(BigInteger)
    signer: Mapped[str] = mapped_column(Code)
    receipt: Mapped[bytes] = mapped_column(LargeBinary)
    #: SHA-256 of the signed body: a duplicate receipt is found by it.
    digest: Mapped[bytes] = mapped_column(LargeBinary(32), unique=True)

    __table_args__ = (Index("ix_delivery_events_packet", "packet_id", "organ", "id"),)


class MailboxItem(Base):
    """Something an organ has to collect: an envelope, or a receipt relayed to it."""

    __tablename__ = "mailbox"
    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    organ: Mapped[str] = mapped_column(Code)
    #: "envelope", "receipt" (an office receipt) or "hub_receipt".
    kind: Mapped[str] = mapped_column(String(16))
    packet_id: Mapped[bytes] = mapped_column(ForeignKey("packets.id"))
    urgency: Mapped[int] = mapped_column(SmallInteger)
    #: For receipts: the ``delivery_events`` row relayed.
    event_id: Mapped[int | None] = mapped_column(ForeignKey("delivery_events.id"))
    created_at: Mapped[int] = mapped_column(BigInteger)

    __table_args__ = (Index("ix_mailbox_organ", "organ", "urgency", "id"),)


class HubReceiptPending(Base):
    """A hub receipt to sign once the sequencer has indexed its audit event."""

    __tablename__ = "hub_receipts_pending"
    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    #: "accepted" or "fetched".
    kind: Mapped[str] = mapped_column(String(16))
    packet_id: Mapped[bytes] = mapped_column(ForeignKey("packets.id"), index=True)
    organ: Mapped[str] = mapped_column(Code)
    at: Mapped[int] = mapped_column(BigInteger)
    #: The encoded audit event, found again in ``log_entries`` by packet id and bytes.
    event: Mapped[bytes] = mapped_column(LargeBinary)
