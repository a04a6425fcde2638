"""Key transparency: an organ's ``directory`` events in the log, with inclusion proofs.

``GET /v1/log/directory/{organ}?size=N`` (office or auditor) answers every ``directory``
audit event of the organ in the tree of the checkpoint of size ``N`` (the newest when
absent), each with its RFC 6962 inclusion proof, as JSON::

    {"organ": "...", "size": N,
     "events": [{"index": i, "entry": "<base64 event>", "proof": ["<base64>", ...]}]}

A node agent asks this for its own organ on every sync and checks that each entry lists
only keys it generated itself (:mod:`nodes.witness`): a key the hub swapped in shows up
here, or -- if the hub leaves the event out -- the entry the hub *serves* is not one the
log holds, which the node checks too.  An omission from this answer is caught by the
auditors, who follow the whole log.

Directory events carry no packet id, so they are among the few entries with a null
``packet_id``; the organ code's bytes pre-select candidates in SQL, and each is parsed
and kept only if it really is this organ's ``directory`` event.
"""

from __future__ import annotations

import base64
from typing import Any, Final

from aiohttp import web
from sqlalchemy import ColumnElement, LargeBinary, TextClause, bindparam, func, select, text
from sqlalchemy.ext.asyncio import AsyncConnection

from protocol.audit import parse_event
from protocol.directory import check_organ_code
from protocol.errors import RemoteError
from protocol.merkle import inclusion_proof

from .api.common import int_query, require
from .auditlog import store
from .auditlog.models import LogEntry
from .context import hub_of

routes = web.RouteTableDef()

#: Most events answered (an organ changes keys a few times a year).
MAX_EVENTS: Final = 1000


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


async def directory_events(conn: AsyncConnection, organ: str, size: int) -> list[tuple[int, bytes]]:
    """``(index, entry)`` of every ``directory`` event of ``organ`` below ``size``."""
    needle = organ.encode("ascii")
    contains: ColumnElement[bool] | TextClause
    if conn.dialect.name == "postgresql":
        contains = text("position(:needle in log_entries.data) > 0").bindparams(
            bindparam("needle", needle, type_=LargeBinary)
        )
    else:
        contains = func.instr(LogEntry.data, needle) > 0
    rows = await conn.execute(
        select(LogEntry.idx, LogEntry.data)
        .where(LogEntry.packet_id.is_(None), LogEntry.idx < size, contains)
        .order_by(LogEntry.idx)
    )
    out: list[tuple[int, bytes]] = []
    for idx, data in rows:
        event = parse_event(bytes(data))
        if event.kind == "directory" and event.fields["organ"] == organ:
            out.append((int(idx), bytes(data)))
            if len(out) >= MAX_EVENTS:
                break
    return out


@routes.get("/v1/log/directory/{organ}", allow_head=False)
async def directory_log(request: web.Request) -> web.Response:
    await require(request, "office", "auditor")
    organ = check_organ_code(request.match_info["organ"])
    wanted = int_query(request, "size", -1, 0, 2**63 - 1)
    hub = hub_of(request)
    async with store.reading(hub.engine) as conn:
        published = await store.published_checkpoint(conn, None if wanted < 0 else wanted)
        if published is None:
            if wanted >= 0:
                raise RemoteError(
                    "tree_size_invalid", f"the log signed no checkpoint of size {wanted}"
                )
            raise RemoteError("tree_size_invalid", "the log has signed no checkpoint yet")
        size = published[0].size
        found = await directory_events(conn, organ, size)
        proofs = await store.with_hashes(
            conn, lambda r: [inclusion_proof(i, size, r) for i, _ in found]
        )
    events: list[dict[str, Any]] = [
        {"index": i, "entry": _b64(entry), "proof": [_b64(h) for h in proof]}
        for (i, entry), proof in zip(found, proofs, strict=True)
    ]
    return web.json_response({"organ": organ, "size": size, "events": events})
