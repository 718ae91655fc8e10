"""The index database: the engine (SQLite or PostgreSQL via pg8000), write transactions that replicas take
one at a time, the migrations run at start, and database errors turned into ``StoreUnavailable``."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine, make_url

from xscreen.store.config import StoreConfig
from xscreen.store.errors import StoreUnavailable
from xscreen.store.schema import VERSION_TABLE

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
# PostgreSQL advisory lock keys (64-bit): the store's writers, and the migrations at start
WRITE_LOCK = 0x78736372_73746F01
MIGRATION_LOCK = 0x78736372_73746F02
_WRITE = "xscreen_store_write"
log = logging.getLogger("xscreen.store")


def _sqlite_engine(config: StoreConfig) -> Engine:
    """SQLite in WAL mode. pysqlite's own transaction handling is switched off (it emits no BEGIN before
    DDL or SELECT); SQLAlchemy's "begin" event emits BEGIN, or BEGIN IMMEDIATE for writes, which takes
    the database's write lock at once: writers of several processes then queue instead of deadlocking
    (SQLAlchemy's SQLite docs, "Enabling Non-Legacy SQLite Transactional Modes")."""
    path = Path(make_url(config.url).database)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)  # SQLite would create it 0644; -wal and -shm follow
    try:
        with contextlib.suppress(PermissionError):  # another user's file: its owner chose its mode
            os.fchmod(fd, 0o600)
    finally:
        os.close(fd)
    engine = sa.create_engine(
        config.url, connect_args={"check_same_thread": False, "timeout": config.db_timeout_s}
    )

    @event.listens_for(engine, "connect")
    def _connect(dbapi_connection, _record) -> None:
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute(f"PRAGMA busy_timeout={int(config.db_timeout_s * 1000)}")
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _begin(connection: Connection) -> None:
        write = connection.get_execution_options().get(_WRITE)
        connection.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")

    return engine


def create_engine(config: StoreConfig) -> Engine:
    """The engine of the store's index (connections are made on first use, not here)."""
    if not config.is_postgres:
        return _sqlite_engine(config)
    return sa.create_engine(
        config.url,
        pool_pre_ping=True,  # a connection lost while idle (database restart) is replaced, not used
        pool_size=4,
        max_overflow=4,
        pool_timeout=config.db_timeout_s,
        connect_args={"timeout": config.db_timeout_s, "application_name": "xscreen-store"},
    )


@contextlib.contextmanager
def transaction(engine: Engine, *, write: bool = False, locked: bool = False) -> Iterator[Connection]:
    """A transaction, committed when the block ends without an exception.

    ``write``: SQLite takes its write lock at BEGIN. ``locked``: also PostgreSQL's write advisory lock,
    held to the commit, so the bag writes of all replicas (room reserved, bags evicted, seq given) happen
    one after the other."""
    with engine.connect() as conn:
        if write or locked:
            conn.execution_options(**{_WRITE: True})
        with conn.begin():
            if locked and conn.dialect.name == "postgresql":
                conn.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": WRITE_LOCK})
            yield conn


def migrate(engine: Engine) -> None:
    """Bring the tables to the newest revision (Alembic's ``upgrade head``) in one transaction.

    Replicas starting at once take turns: PostgreSQL's migration advisory lock, SQLite's write lock. The
    one after finds the tables at head and does nothing."""
    from alembic import command
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS).replace("%", "%%"))
    config.set_main_option("path_separator", "os")
    alembic_log = logging.getLogger("alembic")
    if alembic_log.level == logging.NOTSET:  # its plugin and context lines at INFO say nothing to a site
        alembic_log.setLevel(logging.WARNING)
    with transaction(engine, write=True) as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK})
        config.attributes["connection"] = conn
        command.upgrade(config, "head")
        revision = conn.execute(sa.text(f"SELECT version_num FROM {VERSION_TABLE}")).scalar()
    log.info("scan store index at revision %s", revision)


def describe_db_error(exc: BaseException) -> str:
    """The driver's own message, first line (never the statement's parameters)."""
    cause = getattr(exc, "orig", None) or exc
    text = str(cause).strip().splitlines()
    return text[0][:300] if text else type(cause).__name__


# What a lost database raises: the driver's errors as SQLAlchemy wraps them, the pool's timeout, and a bare
# socket error (pg8000 lets ConnectionResetError through when the pool's pre-ping meets a cut connection).
DATABASE_ERRORS = (sa.exc.DBAPIError, sa.exc.TimeoutError, OSError)


@contextlib.contextmanager
def unavailable_on_error() -> Iterator[None]:
    """Turn the database's failures (connection lost, timeout, refused) into StoreUnavailable. Only for
    blocks that touch no file: an OSError in them is the database's socket."""
    try:
        yield
    except sa.exc.IntegrityError:
        raise  # a constraint, not the database's health: the caller's own business
    except DATABASE_ERRORS as exc:
        raise StoreUnavailable(
            f"the scan store's database is unavailable: {describe_db_error(exc)}"
        ) from None
