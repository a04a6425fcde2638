"""Fixtures for end-to-end tests: one real hub per test session, offices per test."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.hub.conftest import create_pg, drop_pg, run_sync, unique_name

from .harness import Hub, Node, unique


@pytest.fixture(scope="session")
def hub(tmp_path_factory: pytest.TempPathFactory, worker_id: str) -> Iterator[Hub]:
    """A ``lienthong-hub serve`` on PostgreSQL (a database of its own, dropped afterwards),
    shared by the session's tests.  ``make demo`` covers the embedded SQLite default.

    Tests never share organs (every code carries a random suffix), so they cannot see
    each other's packets.
    """
    name = unique_name("lt_e2e", worker_id)
    url = run_sync(create_pg(name))
    try:
        h = Hub(tmp_path_factory.mktemp("e2e-hub")).init(database_url=url).start()
        try:
            yield h
        finally:
            h.stop()
    finally:
        run_sync(drop_pg(name))


OfficeFactory = Callable[..., Node]


@pytest.fixture
def office(hub: Hub, tmp_path: Path) -> Iterator[OfficeFactory]:
    """``office(prefix, name, parent=None, level=...)``: an enrolled, initialised node."""
    made: list[Node] = []

    def make(prefix: str, name: str, *, parent: Node | None = None, level: str = "other") -> Node:
        code = unique(prefix)
        token = hub.token_for(code, name, parent=parent.code if parent else None, level=level)
        node = Node(tmp_path, code, code)
        node.init(hub, token, "--abbrev", prefix.split(".")[-1])
        made.append(node)
        return node

    try:
        yield make
    finally:
        for node in made:
            node.stop()
