"""The e-mail gateway's messages (``email_messages``).

Revision ID: 0002_email
Revises: 0001_base
Create Date: 2025-11-21
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002_email"
down_revision: str | None = "0001_base"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
Code = sa.String(64)


def upgrade() -> None:
    op.create_table(
        "email_messages",
        sa.Column("id", BigId, autoincrement=True, nullable=False),
        sa.Column("direction", sa.String(3), nullable=False),
        sa.Column("organ", Code, nullable=False),
        sa.Column("packet_id", sa.LargeBinary(16), nullable=False),
        sa.Column("item", sa.String(16), nullable=False),
        sa.Column("digest", sa.LargeBinary(32), nullable=False),
        sa.Column("mailbox_id", sa.BigInteger(), nullable=True),
        sa.Column("urgency", sa.SmallInteger(), nullable=False),
        sa.Column("address", sa.String(254), nullable=False),
        sa.Column("message_id", sa.String(255), nullable=True),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt", sa.BigInteger(), nullable=False),
        sa.Column("claimed_until", sa.BigInteger(), nullable=True),
        sa.Column("error", sa.String(512), nullable=True),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.Column("updated_at", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(
            ["packet_id"], ["packets.id"], name="fk_email_messages_packet_id_packets"
        ),
        sa.PrimaryKeyConstraint("id", name="pk_email_messages"),
    )
    op.create_index(
        "uq_email_messages_item", "email_messages", ["direction", "organ", "digest"], unique=True
    )
    op.create_index("ix_email_messages_due", "email_messages", ["state", "next_attempt"])
    op.create_index("ix_email_messages_packet", "email_messages", ["packet_id"])


def downgrade() -> None:
    op.drop_table("email_messages")
