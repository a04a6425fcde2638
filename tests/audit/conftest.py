"""Fixtures for the auditors' tests: the hub's real-database fixtures, and auditors.

The hub runs in-process (``create_app`` in aiohttp's test server on an ephemeral port) on
SQLite and on PostgreSQL, exactly as in ``tests/hub``; an :class:`nodes.auditor.Auditor`
talks to it over HTTP from the same event loop, with its own SQLite store in the test's
temporary folder.
"""

from __future__ import annotations

from tests.hub.conftest import (  # noqa: F401 - fixtures, by name
    backend,
    database_url,
    hub_env,
    pg_database,
    sqlite_template,
)
