"""The hub's audit log: appending events, sequencing them into a Merkle tree, checkpoints.

Appending is cheap and transactional: :func:`append_event` inserts the encoded entry
into ``log_pending`` inside the caller's transaction, so an event is logged exactly when
the change it records commits.  A single sequencer (``sequencer.py``) later assigns
indexes in batches, stores the tree's hashes and signs a checkpoint; ``store.py`` reads
entries, proofs and per-packet bundles back; ``routes.py`` serves them under ``/v1/log``;
``app.py`` wires routes and the sequencer task into the application.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import insert
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from protocol.audit import encode_event

from ..db import run
from .models import LogPending


async def append_event(session: AsyncSession, kind: str, at: int, /, **fields: Any) -> None:
    """Queue one audit event in the caller's transaction (ids and digests only).

    ``kind`` and ``at`` are positional-only: ``packet_accepted`` events have a field
    named ``kind`` (document, recall ...) of their own.
    """
    packet_id = fields.get("packet_id")
    session.add(
        LogPending(
            data=encode_event(kind, at, **fields),
            packet_id=packet_id if isinstance(packet_id, bytes) else None,
        )
    )


_INSERT_PENDING = insert(LogPending.__table__)  # type: ignore[arg-type]


async def append_encoded(
    db: AsyncSession | AsyncConnection, events: Sequence[tuple[bytes, bytes | None]]
) -> None:
    """Queue many events, already encoded (:func:`protocol.audit.encode_event`), with
    their packet ids, in the caller's transaction: one INSERT for all of them, in order."""
    if events:
        await run(
            db,
            _INSERT_PENDING,
            [{"data": data, "packet_id": packet_id} for data, packet_id in events],
        )
