"""The hub's audit log: appending events, sequencing them into a Merkle tree, checkpoints.

Appending is cheap and transactional: :func:`append_event` inserts the encoded entry
into ``log_pending`` inside the caller's transaction, so an event is logged exactly when
the change it records commits.  A single sequencer (see ``sequencer.py``) later assigns
indexes in batches, stores the tree's hashes and signs a checkpoint.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from protocol.audit import encode_event

from .models import LogPending


async def append_event(session: AsyncSession, kind: str, at: int, **fields: Any) -> None:
    """Queue one audit event in the caller's transaction (ids and digests only)."""
    session.add(LogPending(data=encode_event(kind, at, **fields)))
