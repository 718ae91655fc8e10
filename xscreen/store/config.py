"""The scan store's configuration: the folder, the index database's URL and the retention limits."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from xscreen.model.classes import CLASS_NAMES
from xscreen.store.errors import StoreConfigError

DEFAULT_MAX_BAGS = 100_000
DEFAULT_MAX_BYTES = 20 * 1024**3
DEFAULT_MAX_AGE_S = 7 * 24 * 3600.0
SQLITE_NAME = "index.sqlite3"
_POSTGRES_SCHEMES = {"postgresql", "postgres", "postgresql+pg8000"}


def normalise_database_url(url: str) -> str:
    """``url`` with PostgreSQL on the pg8000 driver (``postgresql://`` becomes ``postgresql+pg8000://``).

    Only PostgreSQL (pg8000) and SQLite are accepted. The message of a refused URL never shows it, since
    it may hold a password; it names the scheme only.
    """
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        parsed = make_url(url.strip())
    except (ArgumentError, ValueError):
        raise StoreConfigError(
            "the store database URL is not a URL (postgresql://USER:PASSWORD@HOST:PORT/DB or sqlite:///PATH)"
        ) from None
    if parsed.drivername in _POSTGRES_SCHEMES:
        if not parsed.database:
            raise StoreConfigError("the store database URL names no database (postgresql://.../DBNAME)")
        return parsed.set(drivername="postgresql+pg8000").render_as_string(hide_password=False)
    if parsed.drivername in {"sqlite", "sqlite+pysqlite"}:
        if not parsed.database or parsed.database == ":memory:":
            raise StoreConfigError("a SQLite store database needs a file (sqlite:////PATH/index.sqlite3)")
        return parsed.render_as_string(hide_password=False)
    raise StoreConfigError(
        f"the store database URL has scheme {parsed.drivername!r}; use postgresql:// (driven by pg8000) "
        "or sqlite:///"
    )


def redacted_url(url: str) -> str:
    """``url`` with its password shown as ``***`` (for logs and reprs)."""
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


@dataclass(frozen=True)
class StoreConfig:
    """Where bags go and how long they stay; a bag is evicted (oldest first) past any of the three limits.

    ``database_url`` unset: a SQLite file ``index.sqlite3`` in ``store_dir``. ``max_bytes`` bounds the bag
    files on disk (counted in whole blocks, as ``du`` does); the index is not counted. ``class_names``:
    the classes a reviewer may give a missed object.
    """

    store_dir: Path
    database_url: str | None = field(default=None, repr=False)
    max_bags: int = DEFAULT_MAX_BAGS
    max_bytes: int = DEFAULT_MAX_BYTES
    max_age_s: float = DEFAULT_MAX_AGE_S
    class_names: tuple[str, ...] = field(default=CLASS_NAMES, repr=False)
    db_timeout_s: float = 10.0  # connect and statement timeout (PostgreSQL), lock wait (SQLite)
    stale_write_s: float = 600.0  # a bag still being written after this is taken as abandoned
    retry_s: float = 5.0  # after the database was unreachable, the next attempt waits this long

    def __post_init__(self) -> None:
        object.__setattr__(self, "store_dir", Path(self.store_dir))
        for name in ("max_bags", "max_bytes", "max_age_s", "db_timeout_s", "stale_write_s"):
            if not getattr(self, name) > 0:
                raise StoreConfigError(f"store {name} must be > 0, got {getattr(self, name)!r}")
        if self.retry_s < 0:
            raise StoreConfigError(f"store retry_s must be >= 0, got {self.retry_s!r}")
        if self.database_url is not None:
            object.__setattr__(self, "database_url", normalise_database_url(self.database_url))

    @property
    def url(self) -> str:
        """The index database's URL: the configured one or the SQLite file in the store folder."""
        if self.database_url is not None:
            return self.database_url
        return f"sqlite:///{(self.store_dir / SQLITE_NAME).resolve()}"

    @property
    def is_postgres(self) -> bool:
        return self.url.startswith("postgresql")

    def describe(self) -> str:
        """One line for the start-up log (the database password hidden)."""
        return (
            f"scan store in {self.store_dir}, index {redacted_url(self.url)}; keeps at most {self.max_bags} "
            f"bags, {self.max_bytes} bytes, {self.max_age_s:g} s"
        )
