"""Tables of the audit log."""

from __future__ import annotations

from sqlalchemy import BigInteger, Integer, LargeBinary
from sqlalchemy.orm import Mapped, mapped_column

from ..db import Base

# SQLite only auto-increments an INTEGER PRIMARY KEY; PostgreSQL wants BIGINT.
BigId = BigInteger().with_variant(Integer(), "sqlite")


class LogPending(Base):
    """Events appended but not yet given an index by the sequencer."""

    __tablename__ = "log_pending"
    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    data: Mapped[bytes] = mapped_column(LargeBinary, nullable=False)
