"""Wiring the audit log into the hub application: routes and the sequencer task.

:func:`setup_auditlog` is called by the application factory after it has registered the
cleanup context that opens the database engine (cleanup contexts start in order).  It

* adds the ``/v1/log`` routes (:mod:`hub.auditlog.routes`),
* stores a :class:`~hub.auditlog.routes.LogApi` under :data:`LOG_API`,
* appends a cleanup context that, on startup, runs one batch at once (so a fresh log has
  its empty-tree checkpoint before the first request) and then runs the
  :class:`~hub.auditlog.sequencer.Sequencer` as a background task, cancelled on cleanup.

Every hub process runs a sequencer; the advisory lock makes exactly one of them sequence at
a time (see :mod:`hub.auditlog.sequencer`).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final

from aiohttp import web
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from protocol.bundle import witness_verifier
from protocol.checkpoint import CosignatureVerifier, NoteSigner
from protocol.errors import RemoteError
from protocol.keys import SIG_ED25519, SIG_HYBRID, SigningPrivateKey, SigningPublicKey

from ..logs import get_logger
from .routes import Authorize, Caller, LogApi, WitnessKeys, make_routes
from .sequencer import Sequencer

log = get_logger("hub.auditlog")

LOG_API: Final = web.AppKey("lienthong_log_api", LogApi)


@dataclass(slots=True)
class LogRuntime:
    """The running sequencer and its task (set at startup; the app's state is frozen then)."""

    sequencer: Sequencer | None = None
    task: asyncio.Task[None] | None = None


LOG_RUNTIME: Final = web.AppKey("lienthong_log_runtime", LogRuntime)

EngineSource = AsyncEngine | web.AppKey[AsyncEngine]


def directory_witness_keys(engine: Callable[[], AsyncEngine]) -> WitnessKeys:
    """Witness keys from the directory: the caller's valid signing keys (its token's key
    when the token names one), each as ``lienthong.witness/<organ>`` (Ed25519 part)."""
    from hub.models import OrganKey  # the directory tables belong to the hub proper

    async def lookup(caller: Caller) -> Sequence[CosignatureVerifier]:
        now = int(time.time())
        query = select(OrganKey.alg, OrganKey.pub).where(
            OrganKey.organ == caller.organ,
            OrganKey.usage == "sign",
            OrganKey.not_before <= now,
            OrganKey.not_after > now,
            OrganKey.revoked_at.is_(None) | (OrganKey.revoked_at > now),
        )
        if caller.kid is not None:
            query = query.where(OrganKey.kid == caller.kid)
        async with engine().connect() as conn:
            rows = (await conn.execute(query)).all()
        out: list[CosignatureVerifier] = []
        for alg, pub in rows:
            if alg not in (SIG_ED25519, SIG_HYBRID):
                continue
            try:
                out.append(witness_verifier(caller.organ, SigningPublicKey.from_raw(alg, pub)))
            except RemoteError:
                log.warning("unusable signing key in the directory", organ=caller.organ)
        return out

    return lookup


async def hub_authorize(request: web.Request, roles: frozenset[str]) -> Caller:
    """The hub's bearer-token check (:func:`hub.api.common.require`)."""
    from hub.api.common import require  # imported late: it pulls in the whole hub context

    return await require(request, *sorted(roles))


def setup_auditlog(
    app: web.Application,
    *,
    engine: EngineSource,
    key: SigningPrivateKey | NoteSigner,
    origin: str | None = None,
    authorize: Authorize = hub_authorize,
    witness_keys: WitnessKeys | None = None,
    run_sequencer: bool = True,
    sequencer_options: dict[str, Any] | None = None,
) -> None:
    """Add the audit log's routes and (unless ``run_sequencer`` is false) its sequencer.

    ``engine`` is the engine or the app key under which a previous cleanup context puts it;
    ``key`` the hub signing key (its Ed25519 part signs checkpoints) with ``origin``
    ``lienthong.hub/<hub name>``, or a ready :class:`NoteSigner`; ``authorize`` the
    bearer-token check (default: the hub's own, which needs the app's ``HUB`` state);
    ``witness_keys`` maps a caller to its cosigning keys (default: its
    signing keys in the directory).
    """

    def get_engine() -> AsyncEngine:
        if isinstance(engine, web.AppKey):
            return app[engine]
        return engine

    api = LogApi(
        engine=get_engine,
        authorize=authorize,
        witness_keys=witness_keys or directory_witness_keys(get_engine),
    )
    app[LOG_API] = api
    runtime = LogRuntime()
    app[LOG_RUNTIME] = runtime
    app.router.add_routes(make_routes(lambda request: request.app[LOG_API]))
    if not run_sequencer:
        return
    options = dict(sequencer_options or {})

    async def sequencer_ctx(app: web.Application) -> AsyncIterator[None]:
        sequencer = Sequencer(get_engine(), key, origin, **options)
        runtime.sequencer = sequencer
        try:
            await sequencer.sequence_once()
        except Exception:  # the task below retries and keeps logging; serve anyway
            log.exception("the first audit log batch failed")
        task = asyncio.create_task(sequencer.run(), name="lienthong audit log sequencer")
        runtime.task = task
        yield
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        runtime.sequencer = runtime.task = None

    app.cleanup_ctx.append(sequencer_ctx)
