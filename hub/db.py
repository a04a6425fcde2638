"""Database engine and the declarative base shared by every hub table.

One code path for both back ends: SQLite through aiosqlite (the embedded default, a file in
the data folder) and PostgreSQL through asyncpg (production and the test suite).

SQLite transactions start with ``BEGIN IMMEDIATE``: a deferred transaction that reads and
then writes can fail at once with "database is locked" when another connection (another
request, or a CLI command next to ``serve``) holds the lock, since SQLite cannot wait on a
read-to-write upgrade.  Taking the write lock up front lets the busy timeout do its job.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, cast

from sqlalchemy import Boolean, ColumnElement, MetaData, any_, bindparam, event
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import (
    AsyncConnection,
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.orm import DeclarativeBase
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.elements import ClauseElement
from sqlalchemy.sql.visitors import InternalTraversal

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


class InList(ColumnElement[bool]):
    """``column IN (...)`` with the list given as parameter ``name`` at execution.

    SQLite gets an expanding ``IN``.  PostgreSQL gets ``column = ANY(:name)`` with one
    array parameter: an expanding ``IN`` is rendered again for every number of values,
    and asyncpg prepares each rendering as a statement of its own (a round trip, a plan
    in PostgreSQL, and a statement cache that churns under batches of varying size); the
    array form is one statement whatever the count (tests/bench: ~90 us less CPU in the
    hub and ~130 us less time per execution with lists of 1 to 60 ids).
    """

    type = Boolean()
    inherit_cache = True
    _is_implicitly_boolean = True  # a comparison: no "= 1" where booleans are integers
    _traverse_internals = [  # noqa: RUF012 (SQLAlchemy's own declaration is a list)
        ("expanding", InternalTraversal.dp_clauseelement),
        ("array", InternalTraversal.dp_clauseelement),
    ]

    def __init__(self, column: ColumnElement[Any], name: str) -> None:
        self.expanding = column.in_(bindparam(name, expanding=True))
        self.array = column == any_(bindparam(name, type_=ARRAY(column.type)))


def in_list(column: ColumnElement[Any], name: str) -> InList:
    """``column IN`` the list passed as ``name`` (see :class:`InList`)."""
    return InList(column, name)


@compiles(InList)
def _in_list(element: InList, compiler: SQLCompiler, **kw: Any) -> str:
    return compiler.process(element.expanding, **kw)


@compiles(InList, "postgresql")
def _in_array(element: InList, compiler: SQLCompiler, **kw: Any) -> str:
    return compiler.process(element.array, **kw)


def is_sqlite(url: str) -> bool:
    return url.startswith("sqlite")


def make_engine(url: str, **kwargs: Any) -> AsyncEngine:
    """Create the async engine; SQLite gets WAL, a busy timeout and enforced foreign keys."""
    if is_sqlite(url):
        engine = create_async_engine(url, connect_args={"timeout": 30}, **kwargs)

        @event.listens_for(engine.sync_engine, "connect")
        def _pragmas(dbapi_conn: Any, _record: Any) -> None:
            dbapi_conn.isolation_level = None  # we emit BEGIN ourselves, below
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()

        @event.listens_for(engine.sync_engine, "begin")
        def _begin(conn: Connection) -> None:
            conn.exec_driver_sql("BEGIN IMMEDIATE")

        return engine
    # Connections kept open: an overflow connection is closed when returned, and opening
    # one costs a TLS offer, the start-up and every prepared statement again -- under a
    # fan-out storm the churn cost more than the queries (tests/bench, scenario 3).
    kwargs.setdefault("pool_size", 25)
    kwargs.setdefault("max_overflow", 5)
    return create_async_engine(url, **kwargs)


def make_sessionmaker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False)


def read_engine(engine: AsyncEngine) -> AsyncEngine:
    """The same pool for reads that need no transaction: on PostgreSQL, autocommit.

    A read-only session or connection on asyncpg costs ``BEGIN`` and ``ROLLBACK`` round
    trips around its queries; in autocommit each query is one round trip.  Under
    PostgreSQL's READ COMMITTED every statement takes its own snapshot anyway, so a
    transaction around a few reads adds no consistency.  Never write through it.  SQLite
    keeps its ordinary transactions (one process, no network round trips, and its
    ``BEGIN IMMEDIATE`` set-up above assumes them).
    """
    if engine.url.get_backend_name() == "sqlite":
        return engine
    return engine.execution_options(isolation_level="AUTOCOMMIT")


#: Statements compiled for PostgreSQL by :func:`read_rows`, by identity: (the statement,
#: kept so that its id is not reused, and its compiled form).  Meant for module-level
#: statements, so it holds a handful.
_COMPILED: dict[int, tuple[ClauseElement, SQLCompiler]] = {}


async def read_rows(
    conn: AsyncConnection, statement: ClauseElement, params: Mapping[str, Any]
) -> Sequence[Mapping[str, Any]]:
    """The rows of a read-only ``statement``, by column name, on a connection of
    :func:`read_engine` (PostgreSQL: autocommit, never in a transaction).

    On PostgreSQL the statement is compiled once for the connection's dialect and run on
    the asyncpg connection underneath: about 100 us of Python per read against ~280 us
    through SQLAlchemy's execution (cache lookup, parameter processing, cursor adapter,
    result rows), which mattered on the mailbox reads every delivery makes two or three of
    (tests/bench, scenario 5).  Only for statements whose parameters and columns need no
    type conversion (integers, text, bytes, lists of those).  SQLite runs the statement
    through SQLAlchemy.
    """
    if conn.dialect.name != "postgresql":
        result = await conn.execute(statement, params)  # type: ignore[call-overload]
        return [cast(Mapping[str, Any], row._mapping) for row in result]
    found = _COMPILED.get(id(statement))
    if found is None or found[0] is not statement:
        found = (statement, cast(SQLCompiler, statement.compile(dialect=conn.dialect)))
        _COMPILED[id(statement)] = found
    compiled = found[1]
    values = compiled.construct_params(params)
    raw = await conn.get_raw_connection()
    driver: Any = raw.driver_connection
    rows: Sequence[Mapping[str, Any]] = await driver.fetch(
        compiled.string, *(values[name] for name in compiled.positiontup or ())
    )
    return rows
