"""The application's typed state: what every handler and service of the hub works with.

:func:`hub.app.create_app` opens these resources in a ``cleanup_ctx`` and closes them on
shutdown.  Each is also under its own :class:`web.AppKey`, so code outside this package
(the audit log's routes and sequencer) reaches the engine or the settings without
knowing about :class:`Hub`.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final, ParamSpec, TypeVar

from aiohttp import web
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from protocol.policy import RoutePolicy, SecrecyPolicy, SizeLimits

from .blobs import BlobStore
from .db import make_sessionmaker, read_engine
from .directory import EntryCache
from .groupcommit import GroupCommit
from .hubkeys import HubKeys
from .hubreceipts import ReceiptSigner
from .mailcache import ItemCache
from .metrics import Metrics
from .notify import MailboxNotifier
from .sessions import TokenCache
from .settings import HubSettings

P = ParamSpec("P")
T = TypeVar("T")


@dataclass(slots=True)
class Hub:
    settings: HubSettings
    keys: HubKeys
    engine: AsyncEngine
    sessions: async_sessionmaker[AsyncSession]
    blobs: BlobStore
    notifier: MailboxNotifier
    metrics: Metrics
    entries: EntryCache
    secrecy: SecrecyPolicy
    routes: RoutePolicy
    limits: SizeLimits
    signer: ReceiptSigner
    #: The engine for reads without a transaction (autocommit on PostgreSQL), and ORM
    #: sessions on it: never write through them.
    reader: AsyncEngine = field(init=False)
    reads: async_sessionmaker[AsyncSession] = field(init=False)
    #: Bearer tokens looked up recently (cleared when sessions change, in any process).
    tokens: TokenCache = field(default_factory=TokenCache)
    #: Encoded envelopes and small bodies of mailbox answers, by packet id.
    items: ItemCache = field(default_factory=ItemCache)
    #: Batch submissions sharing transactions (group commit, :func:`hub.packets.submit_batch`).
    submissions: GroupCommit[Any, Any] = field(default_factory=GroupCommit)
    #: Mailbox acknowledgements sharing transactions (:func:`hub.mailbox.ack`).
    acks: GroupCommit[Any, Any] = field(default_factory=GroupCommit)

    def __post_init__(self) -> None:
        self.reader = read_engine(self.engine)
        self.reads = make_sessionmaker(self.reader)
        self.notifier.on_sessions_changed(self.tokens.clear)
        self.tokens.trusted = self.notifier.hears_sessions

    async def blocking(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Run blocking file I/O off the event loop."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(None, functools.partial(fn, *args, **kwargs))


HUB: Final = web.AppKey("hub", Hub)
SETTINGS: Final = web.AppKey("settings", HubSettings)
KEYS: Final = web.AppKey("keys", HubKeys)
ENGINE: Final = web.AppKey("engine", AsyncEngine)
SESSIONMAKER: Final = web.AppKey("sessionmaker", async_sessionmaker[AsyncSession])
BLOBS: Final = web.AppKey("blobs", BlobStore)
METRICS: Final = web.AppKey("metrics", Metrics)


def hub_of(request: web.Request) -> Hub:
    return request.app[HUB]
