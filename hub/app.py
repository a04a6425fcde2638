"""The hub's aiohttp application factory.

``create_app(settings)`` loads the hub's keys (so the audit log can be wired with them),
and registers, in this order, the cleanup contexts that open and close its resources:

1. storage: the database engine (migrated when ``migrate_on_start``), the blob store, the
   mailbox notifier (PostgreSQL LISTEN), the hub receipt signer -- put under their
   :class:`web.AppKey` s (see :mod:`hub.context`);
2. the audit log's sequencer (:func:`hub.auditlog.app.setup_auditlog`), which needs the
   engine of step 1;
3. the retention task.

Nothing in the process is state another hub process would need: several processes can
serve one PostgreSQL database and one blob store behind a load balancer.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncIterator
from typing import Final

from aiohttp import web

from hub.auditlog.app import LOG_RUNTIME, setup_auditlog
from hub.auditpage import setup_auditpage

from . import keylog
from .api import setup_routes
from .api.common import require
from .api.health import OPENAPI, OPENAPI_FILE
from .blobs import BlobStore
from .context import BLOBS, ENGINE, HUB, KEYS, METRICS, SESSIONMAKER, SETTINGS, Hub
from .db import is_sqlite, make_engine, make_sessionmaker
from .directory import EntryCache
from .email.app import setup_email
from .hubkeys import load_keys
from .hubreceipts import ReceiptSigner
from .logs import get_logger
from .metrics import Metrics
from .middleware import problem_middleware
from .notify import MailboxNotifier, channel_for
from .retention import collect_garbage
from .sessions import Caller
from .settings import HubSettings

#: Largest request body aiohttp reads into memory for ``request.read()`` / ``json()``;
#: bodies stream, and the batch endpoint reads with its own bound.
CLIENT_MAX_SIZE: Final = 1024 * 1024
#: A request's receive buffer: an upload's connection is paused only when twice this much
#: waits for the blob writer (aiohttp's 256 KiB paused it every 512 KiB: a body upload
#: took ~20 % longer).  Only a streaming body ever fills it.
READ_BUFFER: Final = 1024 * 1024
log = get_logger("hub.app")


def log_origin(settings: HubSettings) -> str:
    return f"lienthong.hub/{settings.hub_name}"


def create_app(settings: HubSettings) -> web.Application:
    keys = load_keys(settings.data_dir)
    app = web.Application(
        middlewares=[problem_middleware],
        client_max_size=CLIENT_MAX_SIZE,
        handler_args={"read_bufsize": READ_BUFFER},
    )
    app[SETTINGS] = settings
    app[KEYS] = keys
    app[METRICS] = Metrics()
    app[OPENAPI] = OPENAPI_FILE.read_bytes()
    setup_routes(app)
    app.router.add_routes(keylog.routes)
    setup_auditpage(app)

    async def storage(app: web.Application) -> AsyncIterator[None]:
        engine = make_engine(settings.database_url)
        notifier = MailboxNotifier(channel_for(keys.hub.kid))
        try:
            if settings.migrate_on_start:
                from .migrate import upgrade  # only here: `serve` migrates in a child process

                await upgrade(engine)
            blobs = BlobStore(settings.blobs_path)
            await notifier.start(engine.url)
            sessions = make_sessionmaker(engine)

            def poke_log() -> None:
                sequencer = app[LOG_RUNTIME].sequencer
                if sequencer is not None:
                    sequencer.notify()

            async def sequence_now() -> object:
                sequencer = app[LOG_RUNTIME].sequencer
                return None if sequencer is None else await sequencer.sequence_once()

            signer = ReceiptSigner(
                sessions,
                keys.hub,
                notifier,
                postgres=not is_sqlite(settings.database_url),
                poke_log=poke_log,
                sequence_now=sequence_now,
            )
            app[ENGINE] = engine
            app[SESSIONMAKER] = sessions
            app[BLOBS] = blobs
            app[HUB] = Hub(
                settings=settings,
                keys=keys,
                engine=engine,
                sessions=sessions,
                blobs=blobs,
                notifier=notifier,
                metrics=app[METRICS],
                entries=EntryCache(keys.authority.public_key()),
                secrecy=settings.secrecy_policy(),
                routes=settings.route_policy(),
                limits=settings.size_limits(),
                signer=signer,
            )
            yield
        finally:
            await notifier.close()
            await engine.dispose()

    async def shutdown(app: web.Application) -> None:
        # Long-polls answer (empty) at once rather than hold the shutdown up.
        if HUB in app:
            await app[HUB].notifier.close()

    async def authorize(request: web.Request, roles: frozenset[str]) -> Caller:
        return await require(request, *sorted(roles))

    async def background(app: web.Application) -> AsyncIterator[None]:
        hub = app[HUB]
        tasks = [
            asyncio.create_task(hub.signer.run(), name="hub receipt signer"),
            asyncio.create_task(_retention_loop(hub), name="retention"),
        ]
        yield
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    app.cleanup_ctx.append(storage)
    setup_auditlog(
        app, engine=ENGINE, key=keys.hub, origin=log_origin(settings), authorize=authorize
    )
    app.cleanup_ctx.append(background)
    setup_email(app)
    app.on_shutdown.append(shutdown)
    return app


async def _retention_loop(hub: Hub) -> None:
    while True:
        await asyncio.sleep(hub.settings.gc_interval)
        try:
            report = await collect_garbage(hub)
            log.info("retention pass", **dataclasses.asdict(report))
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("retention pass failed")
