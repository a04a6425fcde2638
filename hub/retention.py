"""Retention and garbage collection of the hub's storage.

* A body is deleted from the blob store once **every** recipient has it -- fetched it
  over HTTPS, or had it sent by e-mail (the gateway's message ``sent``, accepted by the
  relay; a ``failed`` one keeps the body, the office may still fetch it) -- and the
  retention period has passed since it was accepted, and only when no other packet
  still needs the same blob (content addressing can share one).  The packet's row, its
  deliveries and their signed history stay: they are the record.
* Packets whose body never came are dropped after :data:`AWAITING_MAX_AGE` (they were
  never visible to anyone but their sender).
* Temp files of interrupted uploads and blobs no packet refers to (an upload whose
  database commit failed after the rename) are swept once old enough.
* Expired challenges and session tokens are purged.

:func:`collect_garbage` does one pass (tests call it with a chosen ``now``); the app runs
it every ``gc_interval`` seconds.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from sqlalchemy import and_, delete, exists, select, update
from sqlalchemy.orm import aliased

from .clock import now as clock_now
from .context import Hub
from .email.models import OUT, SENT, EmailMessageRow
from .models import DeliveryRow, Packet
from .packets import ACCEPTED, AWAITING
from .sessions import purge_expired

AWAITING_MAX_AGE: Final = 7 * 86400
TEMP_MAX_AGE: Final = 3600.0
ORPHAN_MAX_AGE: Final = 86400.0


@dataclass(slots=True)
class GcReport:
    bodies_deleted: int = 0
    packets_dropped: int = 0
    temp_files: int = 0
    orphans: int = 0
    sessions_purged: int = 0


async def collect_garbage(hub: Hub, now: int | None = None) -> GcReport:
    at = clock_now() if now is None else now
    report = GcReport()
    cutoff = at - hub.settings.retention_seconds
    other = aliased(Packet)
    mailed = exists().where(
        EmailMessageRow.direction == OUT,
        EmailMessageRow.item == "packet",
        EmailMessageRow.state == SENT,
        EmailMessageRow.packet_id == DeliveryRow.packet_id,
        EmailMessageRow.organ == DeliveryRow.organ,
    )
    unfetched = exists().where(
        DeliveryRow.packet_id == Packet.id, DeliveryRow.fetched_at.is_(None), ~mailed
    )
    async with hub.sessions() as session:
        expired = (
            await session.execute(
                select(Packet.id, Packet.body_sha256).where(
                    Packet.state == ACCEPTED,
                    Packet.body_deleted_at.is_(None),
                    Packet.accepted_at <= cutoff,
                    ~unfetched,
                )
            )
        ).all()
        digests = {bytes(d) for _, d in expired}
        still_needed = set()
        if digests:
            expired_ids = [pid for pid, _ in expired]
            rows = await session.scalars(
                select(other.body_sha256).where(
                    other.body_sha256.in_(digests),
                    other.body_deleted_at.is_(None),
                    other.id.not_in(expired_ids),
                )
            )
            still_needed = {bytes(d) for d in rows}
    deletable = [(pid, d) for pid, d in expired if bytes(d) not in still_needed]
    for digest in {bytes(d) for _, d in deletable}:
        await hub.blocking(hub.blobs.delete, digest)
    if deletable:
        async with hub.sessions.begin() as session:
            await session.execute(
                update(Packet)
                .where(Packet.id.in_([pid for pid, _ in deletable]))
                .values(body_deleted_at=at)
            )
    report.bodies_deleted = len(deletable)
    async with hub.sessions.begin() as session:
        result = await session.execute(
            delete(Packet).where(
                and_(Packet.state == AWAITING, Packet.submitted_at <= at - AWAITING_MAX_AGE)
            )
        )
        report.packets_dropped = int(result.rowcount)  # type: ignore[attr-defined]
        report.sessions_purged = await purge_expired(session, at)
    report.temp_files = await hub.blocking(hub.blobs.sweep_temp, TEMP_MAX_AGE, float(at))
    report.orphans = await _sweep_orphans(hub, float(at))
    return report


async def _sweep_orphans(hub: Hub, at: float) -> int:
    def old_blobs() -> list[bytes]:
        return [d for d in hub.blobs.digests() if (hub.blobs.age(d, at) or 0) > ORPHAN_MAX_AGE]

    candidates = await hub.blocking(old_blobs)
    if not candidates:
        return 0
    async with hub.sessions() as session:
        known = {
            bytes(d)
            for d in await session.scalars(
                select(Packet.body_sha256).where(Packet.body_sha256.in_(candidates))
            )
        }
    removed = 0
    for digest in candidates:
        if digest not in known and await hub.blocking(hub.blobs.delete, digest):
            removed += 1
    return removed
