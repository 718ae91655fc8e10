"""The scan store's backends: SQLite in the test's folder, and a schema of its own on the local PostgreSQL.

PostgreSQL: ``XSCREEN_TEST_POSTGRES_URL`` (default ``postgresql+pg8000://postgres@127.0.0.1:5432/test``,
trust auth) is the server. Each test session makes its own database there, and each test a role with a
schema of the same name in it: the store connects as that role, and PostgreSQL's default search_path
("$user", public) puts its tables in that schema. So every test migrates an empty schema, and parallel
runs never share a table or an advisory lock. Roles and schemas are cheap to drop; a database per test
cost a checkpoint each. A server that cannot be reached fails these tests; setting the variable to an
empty value skips them instead.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

import pytest
import sqlalchemy as sa

from xscreen.store import ScanStore, StoreConfig

POSTGRES_ADMIN_URL = os.environ.get(
    "XSCREEN_TEST_POSTGRES_URL", "postgresql+pg8000://postgres@127.0.0.1:5432/test"
)
BACKENDS = ("sqlite", "postgresql")


def _admin_engine(url: str) -> sa.Engine:
    return sa.create_engine(url, isolation_level="AUTOCOMMIT", connect_args={"timeout": 10})


@pytest.fixture(scope="session")
def postgres_database() -> sa.Engine:
    """An admin connection to a database made for this session (dropped at its end)."""
    if not POSTGRES_ADMIN_URL:
        pytest.skip("XSCREEN_TEST_POSTGRES_URL is empty: the PostgreSQL store tests are off")
    server = _admin_engine(POSTGRES_ADMIN_URL)
    name = f"xscreen_store_{os.getpid()}_{secrets.token_hex(4)}"
    try:
        with server.connect() as conn:
            conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    except sa.exc.DBAPIError as exc:
        pytest.fail(f"the PostgreSQL at {POSTGRES_ADMIN_URL} cannot be reached ({exc.orig}); start it, or "
                    "set XSCREEN_TEST_POSTGRES_URL= (empty) to skip the PostgreSQL store tests")  # fmt: skip
    admin = _admin_engine(server.url.set(database=name))
    yield admin
    admin.dispose()
    with server.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    server.dispose()


def postgres_schema_url(admin: sa.Engine, request: pytest.FixtureRequest) -> str:
    """The URL of a new role whose own (empty) schema holds the store's tables; both dropped after."""
    role = f"xs_{secrets.token_hex(6)}"
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE ROLE "{role}" LOGIN'))
        conn.execute(sa.text(f'CREATE SCHEMA AUTHORIZATION "{role}"'))

    def drop() -> None:
        with admin.connect() as conn:
            conn.execute(sa.text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = :r"),
                         {"r": role})  # fmt: skip
            conn.execute(sa.text(f'DROP SCHEMA "{role}" CASCADE'))
            conn.execute(sa.text(f'DROP ROLE "{role}"'))

    request.addfinalizer(drop)
    return admin.url.set(username=role, password=None).render_as_string(hide_password=False)


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def database_url(backend: str, request: pytest.FixtureRequest) -> str | None:
    """None (SQLite in the store folder) or an empty PostgreSQL schema of this test's own."""
    if backend == "sqlite":
        return None
    return postgres_schema_url(request.getfixturevalue("postgres_database"), request)


@pytest.fixture
def postgres_url(postgres_database: sa.Engine, request: pytest.FixtureRequest) -> str:
    """An empty PostgreSQL schema of this test's own, for the tests that are about PostgreSQL alone."""
    return postgres_schema_url(postgres_database, request)


@pytest.fixture
def make_store(tmp_path: Path, database_url: str | None):
    """``make_store(**limits)``: a ScanStore in tmp_path/store on this test's backend (closed after)."""
    stores: list[ScanStore] = []

    def make(store_dir: Path | None = None, **limits) -> ScanStore:
        config = StoreConfig(store_dir or tmp_path / "store", database_url=database_url, **limits)
        stores.append(ScanStore(config))
        return stores[-1]

    yield make
    for store in stores:
        store.close()
