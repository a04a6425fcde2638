"""Alembic environment of the hub: always run through :mod:`hub.migrate`.

The hub migrates programmatically (``serve`` on start, ``lienthong-hub migrate``): the
caller opens an async connection, takes a lock, and hands its synchronous face to Alembic
in ``config.attributes["connection"]``, so one code path serves SQLite and PostgreSQL.
"""

from __future__ import annotations

from alembic import context

from hub.auditlog.models import LOG_TABLES
from hub.db import Base
from hub.models import Packet

config = context.config
target_metadata = Base.metadata
# Importing the two model modules registers every table on Base.metadata.
_REGISTERED = (LOG_TABLES, Packet)


def run_migrations() -> None:
    connection = config.attributes.get("connection")
    if connection is None:
        raise RuntimeError("run hub migrations through hub.migrate (lienthong-hub migrate)")
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=True,  # SQLite alters tables by copying them
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    raise RuntimeError("offline (SQL script) migrations are not supported")
run_migrations()
