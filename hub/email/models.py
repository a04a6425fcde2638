"""The gateway's table: one row per message sent to an office or taken from one.

``email_messages`` makes the e-mail transport idempotent.  Outbound, a row is queued once
per (recipient organ, item): the item's digest -- the envelope digest of a packet, the
digest of a receipt's signed body -- is unique with the direction and organ, so however
often the sender's pass runs, each item goes to each office at most once; the row's
state changes from ``pending`` to ``sent`` in the same transaction as the ``email`` audit
event that records it.  Inbound, a row records each packet or receipt a message brought.
"""

from __future__ import annotations

from sqlalchemy import BigInteger, ForeignKey, Index, Integer, LargeBinary, SmallInteger, String
from sqlalchemy.orm import Mapped, mapped_column

from ..db import Base
from ..models import BigId, Code

#: Directions.
OUT = "out"
IN = "in"
#: Items: a packet (envelope and body), an office receipt relayed, a hub receipt
#: (``fetched`` relayed to the sender, ``accepted`` answering an e-mailed submission).
ITEMS = ("packet", "receipt", "fetched", "accepted")
#: States: outbound ``pending`` -> ``sending`` (claimed by one hub process) -> ``sent`` or
#: back to ``pending`` (deferred) or ``failed`` (for good); inbound ``received``.
PENDING = "pending"
SENDING = "sending"
SENT = "sent"
FAILED = "failed"
RECEIVED = "received"


class EmailMessageRow(Base):
    __tablename__ = "email_messages"
    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    direction: Mapped[str] = mapped_column(String(3))
    organ: Mapped[str] = mapped_column(Code)
    packet_id: Mapped[bytes] = mapped_column(ForeignKey("packets.id"))
    item: Mapped[str] = mapped_column(String(16))
    digest: Mapped[bytes] = mapped_column(LargeBinary(32))
    #: The mailbox item this message delivers (removed once sent), if any.
    mailbox_id: Mapped[int | None] = mapped_column(BigInteger)
    urgency: Mapped[int] = mapped_column(SmallInteger)
    #: The recipient's address (out) or the sender's (in), as used.
    address: Mapped[str] = mapped_column(String(254))
    message_id: Mapped[str | None] = mapped_column(String(255))
    state: Mapped[str] = mapped_column(String(16))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt: Mapped[int] = mapped_column(BigInteger)
    #: While ``sending``: until when the claiming process owns it (a crash frees it).
    claimed_until: Mapped[int | None] = mapped_column(BigInteger)
    #: The last failure: a short code and the relay's answer.
    error: Mapped[str | None] = mapped_column(String(512))
    created_at: Mapped[int] = mapped_column(BigInteger)
    updated_at: Mapped[int] = mapped_column(BigInteger)

    __table_args__ = (
        Index("uq_email_messages_item", "direction", "organ", "digest", unique=True),
        Index("ix_email_messages_due", "state", "next_attempt"),
        Index("ix_email_messages_packet", "packet_id"),
    )
