"""The auditors' web page at ``/audit``: server-rendered, Vietnamese, read-only.

:func:`setup_auditpage` adds its routes (:mod:`hub.auditpage.views`) and its Jinja2
templates to the hub's application.  What it shows comes from :mod:`hub.auditpage.data`;
how auditors sign in, from :mod:`hub.auditpage.auth`.  The page is a convenience on the
hub's own view; an auditor who trusts no hub uses ``lienthong-audit``, which checks the
same facts on its own machine.
"""

from __future__ import annotations

from aiohttp import web

from .views import TEMPLATES, routes, templates

__all__ = ["setup_auditpage"]


def setup_auditpage(app: web.Application) -> None:
    """Register the audit page's routes and templates on the hub's application."""
    app[TEMPLATES] = templates()
    app.router.add_routes(routes)
