"""The base schema: directory, sessions, packets, deliveries, mailbox, audit log.

Revision ID: 0001_base
Revises:
Create Date: 2025-11-21
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001_base"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
Code = sa.String(64)


def upgrade() -> None:
    op.create_table(
        "organs",
        sa.Column("code", Code, nullable=False),
        sa.Column("name", sa.String(512), nullable=False),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("level", sa.String(32), nullable=False),
        sa.Column("parent", Code, nullable=True),
        sa.Column("email", sa.String(254), nullable=True),
        sa.Column("transports", sa.String(32), nullable=False),
        sa.Column("valid_from", sa.BigInteger(), nullable=False),
        sa.Column("valid_until", sa.BigInteger(), nullable=True),
        sa.Column("successor", Code, nullable=True),
        sa.Column("serial", sa.Integer(), nullable=False),
        sa.Column("entry", sa.LargeBinary(), nullable=True),
        sa.Column("updated_at", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("code", name="pk_organs"),
    )
    op.create_index("ix_organs_parent", "organs", ["parent"])
    op.create_table(
        "organ_keys",
        sa.Column("kid", sa.LargeBinary(32), nullable=False),
        sa.Column("organ", Code, nullable=False),
        sa.Column("usage", sa.String(8), nullable=False),
        sa.Column("alg", sa.String(32), nullable=False),
        sa.Column("pub", sa.LargeBinary(), nullable=False),
        sa.Column("not_before", sa.BigInteger(), nullable=False),
        sa.Column("not_after", sa.BigInteger(), nullable=False),
        sa.Column("revoked_at", sa.BigInteger(), nullable=True),
        sa.ForeignKeyConstraint(["organ"], ["organs.code"], name="fk_organ_keys_organ_organs"),
        sa.PrimaryKeyConstraint("kid", name="pk_organ_keys"),
    )
    op.create_index("ix_organ_keys_organ", "organ_keys", ["organ"])
    op.create_table(
        "directory_history",
        sa.Column("organ", Code, nullable=False),
        sa.Column("serial", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("action", sa.String(16), nullable=False),
        sa.Column("entry", sa.LargeBinary(), nullable=False),
        sa.Column("issued_at", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(
            ["organ"], ["organs.code"], name="fk_directory_history_organ_organs"
        ),
        sa.PrimaryKeyConstraint("organ", "serial", name="pk_directory_history"),
    )
    op.create_table(
        "enrolment_tokens",
        sa.Column("token_hash", sa.LargeBinary(32), nullable=False),
        sa.Column("organ", Code, nullable=False),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.Column("expires_at", sa.BigInteger(), nullable=False),
        sa.Column("used_at", sa.BigInteger(), nullable=True),
        sa.ForeignKeyConstraint(
            ["organ"], ["organs.code"], name="fk_enrolment_tokens_organ_organs"
        ),
        sa.PrimaryKeyConstraint("token_hash", name="pk_enrolment_tokens"),
    )
    op.create_index("ix_enrolment_tokens_organ", "enrolment_tokens", ["organ"])
    op.create_table(
        "session_challenges",
        sa.Column("challenge", sa.LargeBinary(32), nullable=False),
        sa.Column("organ", Code, nullable=False),
        sa.Column("expires_at", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("challenge", name="pk_session_challenges"),
    )
    op.create_index("ix_session_challenges_organ", "session_challenges", ["organ"])
    op.create_index("ix_session_challenges_expires_at", "session_challenges", ["expires_at"])
    op.create_table(
        "session_tokens",
        sa.Column("token_hash", sa.LargeBinary(32), nullable=False),
        sa.Column("organ", Code, nullable=False),
        sa.Column("kid", sa.LargeBinary(32), nullable=False),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.Column("expires_at", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(
            ["kid"], ["organ_keys.kid"], name="fk_session_tokens_kid_organ_keys"
        ),
        sa.PrimaryKeyConstraint("token_hash", name="pk_session_tokens"),
    )
    op.create_index("ix_session_tokens_kid", "session_tokens", ["kid"])
    op.create_index("ix_session_tokens_expires_at", "session_tokens", ["expires_at"])
    op.create_table(
        "packets",
        sa.Column("id", sa.LargeBinary(16), nullable=False),
        sa.Column("sender", Code, nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("envelope", sa.LargeBinary(), nullable=False),
        sa.Column("envelope_digest", sa.LargeBinary(32), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("urgency", sa.SmallInteger(), nullable=False),
        sa.Column("secrecy", sa.SmallInteger(), nullable=False),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.Column("submitted_at", sa.BigInteger(), nullable=False),
        sa.Column("accepted_at", sa.BigInteger(), nullable=True),
        sa.Column("body_sha256", sa.LargeBinary(32), nullable=False),
        sa.Column("body_size", sa.BigInteger(), nullable=False),
        sa.Column("target", sa.LargeBinary(16), nullable=True),
        sa.Column("transport", sa.String(8), nullable=False),
        sa.Column("hub_receipt", sa.LargeBinary(), nullable=True),
        sa.Column("body_deleted_at", sa.BigInteger(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_packets"),
    )
    op.create_index("ix_packets_sender", "packets", ["sender"])
    op.create_index("ix_packets_body_sha256", "packets", ["body_sha256"])
    op.create_table(
        "deliveries",
        sa.Column("packet_id", sa.LargeBinary(16), nullable=False),
        sa.Column("organ", Code, nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("fetched_at", sa.BigInteger(), nullable=True),
        sa.Column("updated_at", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(
            ["packet_id"], ["packets.id"], name="fk_deliveries_packet_id_packets"
        ),
        sa.PrimaryKeyConstraint("packet_id", "organ", name="pk_deliveries"),
    )
    op.create_index("ix_deliveries_organ", "deliveries", ["organ", "packet_id"])
    op.create_table(
        "delivery_events",
        sa.Column("id", BigId, autoincrement=True, nullable=False),
        sa.Column("packet_id", sa.LargeBinary(16), nullable=False),
        sa.Column("organ", Code, nullable=False),
        sa.Column("source", sa.String(8), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("at", sa.BigInteger(), nullable=False),
        sa.Column("received_at", sa.BigInteger(), nullable=False),
        sa.Column("signer", Code, nullable=False),
        sa.Column("receipt", sa.LargeBinary(), nullable=False),
        sa.Column("digest", sa.LargeBinary(32), nullable=False),
        sa.ForeignKeyConstraint(
            ["packet_id"], ["packets.id"], name="fk_delivery_events_packet_id_packets"
        ),
        sa.PrimaryKeyConstraint("id", name="pk_delivery_events"),
        sa.UniqueConstraint("digest", name="uq_delivery_events_digest"),
    )
    op.create_index("ix_delivery_events_packet", "delivery_events", ["packet_id", "organ", "id"])
    op.create_table(
        "mailbox",
        sa.Column("id", BigId, autoincrement=True, nullable=False),
        sa.Column("organ", Code, nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("packet_id", sa.LargeBinary(16), nullable=False),
        sa.Column("urgency", sa.SmallInteger(), nullable=False),
        sa.Column("event_id", BigId, nullable=True),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(["packet_id"], ["packets.id"], name="fk_mailbox_packet_id_packets"),
        sa.ForeignKeyConstraint(
            ["event_id"], ["delivery_events.id"], name="fk_mailbox_event_id_delivery_events"
        ),
        sa.PrimaryKeyConstraint("id", name="pk_mailbox"),
    )
    op.create_index("ix_mailbox_organ", "mailbox", ["organ", "urgency", "id"])
    op.create_table(
        "hub_receipts_pending",
        sa.Column("id", BigId, autoincrement=True, nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("packet_id", sa.LargeBinary(16), nullable=False),
        sa.Column("organ", Code, nullable=False),
        sa.Column("at", sa.BigInteger(), nullable=False),
        sa.Column("event", sa.LargeBinary(), nullable=False),
        sa.ForeignKeyConstraint(
            ["packet_id"], ["packets.id"], name="fk_hub_receipts_pending_packet_id_packets"
        ),
        sa.PrimaryKeyConstraint("id", name="pk_hub_receipts_pending"),
    )
    op.create_index("ix_hub_receipts_pending_packet_id", "hub_receipts_pending", ["packet_id"])
    _audit_log_tables()


def _audit_log_tables() -> None:
    """The tables of :mod:`hub.auditlog.models` as they stood at this revision."""
    op.create_table(
        "log_pending",
        sa.Column("id", BigId, autoincrement=True, nullable=False),
        sa.Column("data", sa.LargeBinary(), nullable=False),
        sa.Column("packet_id", sa.LargeBinary(16), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_log_pending"),
    )
    op.create_table(
        "log_entries",
        sa.Column("idx", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("data", sa.LargeBinary(), nullable=False),
        sa.Column("leaf_hash", sa.LargeBinary(32), nullable=False),
        sa.Column("packet_id", sa.LargeBinary(16), nullable=True),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("idx", name="pk_log_entries"),
    )
    op.create_index("ix_log_entries_packet_id", "log_entries", ["packet_id", "idx"])
    op.create_table(
        "log_hashes",
        sa.Column("level", sa.SmallInteger(), autoincrement=False, nullable=False),
        sa.Column("idx", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("hash", sa.LargeBinary(32), nullable=False),
        sa.PrimaryKeyConstraint("level", "idx", name="pk_log_hashes"),
    )
    op.create_table(
        "log_checkpoints",
        sa.Column("size", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("root", sa.LargeBinary(32), nullable=False),
        sa.Column("note", sa.Text(), nullable=False),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("size", name="pk_log_checkpoints"),
    )
    op.create_table(
        "log_cosignatures",
        sa.Column("size", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("witness", sa.Text(), nullable=False),
        sa.Column("key_hash", sa.Text(), nullable=False),
        sa.Column("organ", sa.Text(), nullable=False),
        sa.Column("timestamp", sa.BigInteger(), nullable=False),
        sa.Column("line", sa.Text(), nullable=False),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("size", "witness", "key_hash", name="pk_log_cosignatures"),
    )


def downgrade() -> None:
    for table in (
        "log_cosignatures",
        "log_checkpoints",
        "log_hashes",
        "log_entries",
        "log_pending",
        "hub_receipts_pending",
        "mailbox",
        "delivery_events",
        "deliveries",
        "packets",
        "session_tokens",
        "session_challenges",
        "enrolment_tokens",
        "directory_history",
        "organ_keys",
        "organs",
    ):
        op.drop_table(table)
