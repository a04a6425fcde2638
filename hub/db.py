"""Database engine and the declarative base shared by every hub table.

One code path for both back ends: SQLite through aiosqlite (the embedded default, a file in
the data folder) and PostgreSQL through asyncpg (production and the test suite).

SQLite transactions start with ``BEGIN IMMEDIATE``: a deferred transaction that reads and
then writes can fail at once with "database is locked" when another connection (another
request, or a CLI command next to ``serve``) holds the lock, since SQLite cannot wait on a
read-to-write upgrade.  Taking the write lock up front lets the busy timeout do its job.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

import asyncpg
from sqlalchemy import (
    Boolean,
    ColumnElement,
    Delete,
    Insert,
    LargeBinary,
    MetaData,
    Select,
    Update,
    any_,
    bindparam,
    event,
    func,
)
from sqlalchemy import exc as sa_exc
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.engine import Connection, Dialect, Row
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
from sqlalchemy.types import TypeEngine

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


class InSubquery(ColumnElement[bool]):
    """``column IN (subquery)``; on PostgreSQL ``column = ANY(ARRAY(subquery))``.

    PostgreSQL plans ``IN (subquery)`` as a semi-join whose side is chosen from the
    subquery's estimated rows; for a recursive CTE that estimate is a guess (hundreds),
    and with it the planner hashes the subquery and scans the whole table, whatever its
    size (the directory's ``organs`` with 2,000 offices: 300 pages per submission batch,
    tests/bench scenario 5).  ``= ANY(ARRAY(...))`` runs the subquery first and looks the
    values up in the table's index, the same plan at any estimate.
    """

    type = Boolean()
    inherit_cache = True
    _is_implicitly_boolean = True
    _traverse_internals = [  # noqa: RUF012 (SQLAlchemy's own declaration is a list)
        ("generic", InternalTraversal.dp_clauseelement),
        ("array", InternalTraversal.dp_clauseelement),
    ]

    def __init__(self, column: ColumnElement[Any], query: Select[Any]) -> None:
        self.generic = column.in_(query)
        self.array = column == any_(func.array(query.scalar_subquery()))


def in_subquery(column: ColumnElement[Any], query: Select[Any]) -> InSubquery:
    """``column IN`` the rows of the one-column ``query`` (see :class:`InSubquery`)."""
    return InSubquery(column, query)


@compiles(InSubquery)
def _in_subquery(element: InSubquery, compiler: SQLCompiler, **kw: Any) -> str:
    return compiler.process(element.generic, **kw)


@compiles(InSubquery, "postgresql")
def _in_subquery_array(element: InSubquery, compiler: SQLCompiler, **kw: Any) -> str:
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


#: Statements compiled for PostgreSQL by :func:`run`, by identity
#: and the parameter names of an INSERT or UPDATE: (the statement, kept so that its id is
#: not reused, and its compiled form, or None where the statement needs SQLAlchemy's own
#: execution).  Meant for module-level statements: past :data:`_COMPILED_MAX` entries a
#: statement is compiled for the one call (a statement built per call would otherwise
#: keep every one alive here).
_COMPILED: dict[tuple[int, tuple[str, ...], bool], tuple[ClauseElement, SQLCompiler | None]] = {}
_COMPILED_MAX = 512


def _compile(
    statement: ClauseElement, dialect: Dialect, keys: tuple[str, ...] = (), many: bool = False
) -> SQLCompiler | None:
    """``statement`` compiled for ``dialect``, or None if only SQLAlchemy can run it: a
    column default computed in Python, a parameter rendered into the SQL at each call
    (an expanding ``IN``), or a parameter type with a conversion."""
    key = (id(statement), keys, many)
    found = _COMPILED.get(key)
    if found is not None and found[0] is statement:
        return found[1]
    compiled: SQLCompiler | None = cast(
        SQLCompiler,
        statement.compile(dialect=dialect, column_keys=list(keys) or None, for_executemany=many),
    )
    assert compiled is not None
    if (
        compiled.insert_prefetch
        or compiled.update_prefetch
        or compiled.post_compile_params  # an expanding IN: rendered per call
        or compiled.literal_execute_params
        or any(_converts(bind.type, dialect) for bind in compiled.binds.values())
    ):
        compiled = None
    if len(_COMPILED) < _COMPILED_MAX:
        _COMPILED[key] = (statement, compiled)
    return compiled


def _converts(type_: TypeEngine[Any], dialect: Dialect) -> bool:
    """Whether SQLAlchemy converts a parameter of this type before the driver sees it
    (an array only if its items are: asyncpg takes a list as it is; binary data is
    only passed through the DB-API's ``Binary``, and asyncpg takes bytes as they are)."""
    if isinstance(type_, ARRAY):
        return _converts(type_.item_type, dialect)
    if isinstance(type_, LargeBinary):
        return False
    return type_.dialect_impl(dialect).bind_processor(dialect) is not None


@dataclass(frozen=True, slots=True)
class Rows:
    """What :func:`run` gives: the rows (positional access and unpacking on both back
    ends) and the number of rows the statement touched."""

    rows: Sequence[Any]
    rowcount: int

    def __iter__(self) -> Iterator[Any]:
        return iter(self.rows)

    def __len__(self) -> int:
        return len(self.rows)

    def first(self) -> Any | None:
        return self.rows[0] if self.rows else None

    def scalar(self) -> Any | None:
        return self.rows[0][0] if self.rows else None

    def scalars(self) -> list[Any]:
        return [row[0] for row in self.rows]


def _translate(error: Exception, sql: str, args: Any) -> Exception:
    """An asyncpg error as the SQLAlchemy exception the same failure raises through it."""
    if isinstance(error, asyncpg.exceptions.IntegrityConstraintViolationError):
        return sa_exc.IntegrityError(sql, args, error)
    if isinstance(error, asyncpg.exceptions.PostgresError):
        return sa_exc.DatabaseError(sql, args, error)
    return sa_exc.DBAPIError(sql, args, error, connection_invalidated=False)


def _positional(
    compiled: SQLCompiler, names: Sequence[str], params: Mapping[str, Any] | None
) -> list[Any]:
    """The statement's parameters in order: straight from ``params`` when it names them
    all (the usual case: 0.5 against 4 us for four columns), else through SQLAlchemy
    (values bound in the statement itself)."""
    if params is not None:
        try:
            return [params[name] for name in names]
        except KeyError:
            pass
    values = compiled.construct_params(params)
    return [values[name] for name in names]


async def run(
    conn: AsyncConnection | AsyncSession,
    statement: ClauseElement,
    params: Mapping[str, Any] | Sequence[Mapping[str, Any]] | None = None,
) -> Rows:
    """Execute a prebuilt Core ``statement`` in the caller's transaction: one set of
    ``params`` (a statement with or without rows), or a list of them (``executemany``; no
    rows back).

    On PostgreSQL the statement is compiled once and run on the asyncpg connection
    underneath, in the transaction SQLAlchemy opened on it: its ``BEGIN`` is sent here if
    no statement came first, through the asyncpg adapter's own ``_start_transaction``
    (SQLAlchemy internals: tests/hub/test_storage.py rolls back such a transaction and
    fails if the write survives).  It saves SQLAlchemy's execution per statement (cache
    key, parameter processing, cursor adapter, result rows): on the hub's hot paths about
    5 % of its CPU per packet (tests/bench, scenario 1: 3.10 -> 3.03 ms; scenario 5 at
    100/s: 12.2 -> 11.4 ms) -- the round trips themselves are most of the rest.  Errors
    come as SQLAlchemy's (:class:`~sqlalchemy.exc.IntegrityError` ...), and SQLAlchemy's
    commit or rollback ends the transaction as usual.  A statement that needs
    SQLAlchemy's conversions (Python-side column defaults, typed parameters, an expanding
    ``IN``) and every statement on SQLite go through SQLAlchemy.
    """
    if isinstance(conn, AsyncSession):
        conn = await conn.connection()
    many = params is not None and not isinstance(params, Mapping)
    keys: tuple[str, ...] = ()
    if isinstance(statement, (Insert, Update)) and params:
        first = cast(Sequence[Mapping[str, Any]], params)[0] if many else params
        keys = tuple(cast(Mapping[str, Any], first))
    compiled = (
        None if conn.dialect.name != "postgresql" else _compile(statement, conn.dialect, keys, many)
    )
    if compiled is None:
        result = await conn.execute(statement, params)  # type: ignore[call-overload]
        rows = result.all() if result.returns_rows else []
        if many:
            return Rows(rows, len(cast(Sequence[Any], params)))
        return Rows(rows, len(rows) if result.returns_rows else result.rowcount)
    raw = await conn.get_raw_connection()
    adapter: Any = raw.dbapi_connection
    driver: Any = raw.driver_connection
    if adapter._transaction is None and adapter.isolation_level != "autocommit":
        await adapter._start_transaction()  # what SQLAlchemy's own first statement does
    names = compiled.positiontup or ()
    sql = compiled.string
    try:
        if many:
            assert not compiled.effective_returning, "executemany gives no rows back"
            batch = cast(Sequence[Mapping[str, Any]], params)
            args = [_positional(compiled, names, one) for one in batch]
            await driver.executemany(sql, args)
            return Rows((), len(batch))
        arg = _positional(compiled, names, cast(Mapping[str, Any] | None, params))
        if isinstance(statement, (Insert, Update, Delete)) and not compiled.effective_returning:
            status: str = await driver.execute(sql, *arg)  # "UPDATE 3": the rows touched
            return Rows((), int(status.rsplit(" ", 1)[-1]) if status[-1:].isdigit() else 0)
        found = await driver.fetch(sql, *arg)
        return Rows(found, len(found))
    except (asyncpg.exceptions.PostgresError, asyncpg.exceptions.InterfaceError) as exc:
        raise _translate(exc, sql, params) from exc


async def read_rows(
    conn: AsyncConnection, statement: ClauseElement, params: Mapping[str, Any]
) -> Sequence[Mapping[str, Any]]:
    """The rows of a read-only ``statement`` by column name, through :func:`run`, on a
    connection of :func:`read_engine` (PostgreSQL: autocommit, never in a transaction):
    on PostgreSQL asyncpg's records are mappings already (about 100 us of Python per read
    against ~280 us through SQLAlchemy's execution, which mattered on the mailbox reads
    every delivery makes two or three of: tests/bench, scenario 5); SQLAlchemy's rows
    give theirs."""
    rows = (await run(conn, statement, params)).rows
    return [cast(Mapping[str, Any], r._mapping) if isinstance(r, Row) else r for r in rows]
