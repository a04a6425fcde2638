"""The hub's HTTP API under ``/v1`` (the audit log's ``/v1/log`` routes are in hub.auditlog)."""

from __future__ import annotations

from aiohttp import web

from . import admin, bodies, directory, health, mailbox, packets, receipts, sessions


def setup_routes(app: web.Application) -> None:
    for module in (health, sessions, directory, admin, packets, mailbox, bodies, receipts):
        app.router.add_routes(module.routes)
