"""Wiring the e-mail gateway into the hub application: one ``cleanup_ctx``.

:func:`setup_email` is called by the application factory after the storage context (the
gateway needs the :class:`~hub.context.Hub`).  On startup it starts, as configured, the
inbound SMTP server in the application's event loop and the outbound sender as a
background task, and keeps both under :data:`EMAIL`; on cleanup it stops them before the
database engine is closed.  ``serve`` logs the server's port as ``smtp_listening``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from aiohttp import web
from prometheus_client import Counter

from ..context import HUB
from ..logs import get_logger
from . import models  # noqa: F401 - its table is part of the schema, gateway on or off
from .settings import EmailSettings

if TYPE_CHECKING:
    from .outbound import Sender

log = get_logger("hub.email")


@dataclass(slots=True)
class EmailGateway:
    settings: EmailSettings
    #: The inbound server and the port it listens on (None: no inbound server).
    server: asyncio.Server | None = None
    port: int | None = None
    #: The outbound sender (None: no relay configured).
    sender: Sender | None = None


EMAIL: Final = web.AppKey("email", EmailGateway)


def setup_email(app: web.Application) -> None:
    async def gateway(app: web.Application) -> AsyncIterator[None]:
        hub = app[HUB]
        cfg = hub.settings.email
        state = EmailGateway(cfg)
        app[EMAIL] = state
        if not (cfg.inbound or cfg.outbound):
            yield
            return
        # Only a hub with the gateway on loads it (aiosmtpd, aiosmtplib, the MIME code).
        from .inbound import start_server
        from .outbound import Sender

        counter = Counter(
            "lienthong_email_messages",
            "E-mail messages by direction and outcome (accepted, sent, deferred, a code ...).",
            ["direction", "outcome"],
            registry=hub.metrics.registry,
        )
        task: asyncio.Task[None] | None = None
        if cfg.inbound:
            state.server = await start_server(hub, cfg, counter)
            state.port = int(state.server.sockets[0].getsockname()[1])
            log.info("smtp_listening", host=cfg.smtp_host, port=state.port, address=cfg.address)
        if cfg.outbound:
            state.sender = Sender(hub, cfg, counter)
            task = asyncio.create_task(state.sender.run(), name="e-mail sender")
        try:
            yield
        finally:
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            if state.server is not None:
                state.server.close()
                await state.server.wait_closed()

    app.cleanup_ctx.append(gateway)
