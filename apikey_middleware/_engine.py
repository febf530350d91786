"""The engine a store makes from a URL: every wait bounded by its timeout."""

from __future__ import annotations

import contextlib
import math
import os
import sqlite3
import threading
import time
import typing as t

import sqlalchemy as sa
from sqlalchemy import event, exc
from sqlalchemy.engine import Engine
from sqlalchemy.pool import StaticPool

from ._watchdog import StatementWatchdog


def _sqlite_setup(timeout: float) -> t.Callable[[t.Any, t.Any], None]:
    """What each new SQLite connection runs first."""

    def on_connect(dbapi_connection: t.Any, connection_record: t.Any) -> None:
        # WAL lets readers go on while a revoke writes; foreign keys are off
        # in SQLite unless asked for.
        cursor = dbapi_connection.cursor()
        try:
            _wal(cursor, timeout)
            cursor.execute("PRAGMA foreign_keys=ON")
        finally:
            cursor.close()

    return on_connect


def _wal(cursor: t.Any, timeout: float) -> None:
    """Put the file in WAL mode (it stays so). Switching needs the file to
    itself and answers "locked" at once, without the busy timeout: workers
    that open a new file together try again until ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if cursor.execute("PRAGMA journal_mode").fetchone()[0] == "wal":
                return
            cursor.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as error:
            if "locked" not in str(error) or time.monotonic() >= deadline:
                raise
            time.sleep(0.01)


class SharedConnectionPool(StaticPool):
    """The one connection of an in-memory SQLite database, lent to one
    thread at a time: every thread (the usage writer's too) sees the same
    database, and two threads' transactions never mix on it."""

    def __init__(self, creator: t.Any, **options: t.Any) -> None:
        super().__init__(creator, **options)
        #: Seconds a thread waits for the connection (the store sets its timeout).
        self.timeout = 30.0
        self._lock = threading.RLock()

    def recreate(self) -> SharedConnectionPool:
        pool = super().recreate()
        assert isinstance(pool, SharedConnectionPool)  # noqa: S101 - built by __class__
        pool.timeout = self.timeout
        return pool

    def _do_get(self) -> t.Any:
        if not self._lock.acquire(timeout=self.timeout):
            raise exc.TimeoutError(f"the in-memory database was busy for {self.timeout} s")
        try:
            return super()._do_get()
        except BaseException:
            self._lock.release()
            raise

    def _do_return_conn(self, record: t.Any) -> None:
        super()._do_return_conn(record)
        # Returned by another thread than took it: nothing to release here.
        with contextlib.suppress(RuntimeError):
            self._lock.release()


def sqlite_file_missing(url: sa.URL) -> bool:
    """Whether ``url`` names a SQLite file that is not there (connecting
    would create it, empty)."""
    database = url.database
    return (
        url.get_backend_name() == "sqlite"
        and database not in (None, "", ":memory:")
        and not database.startswith("file:")
        and not os.path.exists(database)
    )


def _server_connect_args(parsed: sa.URL, timeout: float) -> dict[str, t.Any]:
    """Driver options that bound every wait on a database server by ``timeout``."""
    seconds = max(1, math.ceil(timeout))
    backend = parsed.get_backend_name()
    if backend == "postgresql":
        # The server ends a statement that runs, or waits for a lock, too
        # long; the watchdog (below) covers a connection that stops answering.
        milliseconds = max(1, round(timeout * 1000))
        options = f"-c statement_timeout={milliseconds} -c lock_timeout={milliseconds}"
        given = parsed.query.get("options")
        if isinstance(given, str) and given:
            options = f"{given} {options}"
        return {"connect_timeout": seconds, "options": options}
    if backend in ("mysql", "mariadb"):
        args: dict[str, t.Any] = {
            "connect_timeout": seconds,
            "read_timeout": seconds,
            "write_timeout": seconds,
        }
        if "init_command" not in parsed.query:
            args["init_command"] = (
                f"SET SESSION lock_wait_timeout = {seconds}, innodb_lock_wait_timeout = {seconds}"
            )
        return args
    return {"connect_timeout": seconds}


def create_store_engine(url: str | sa.URL, *, timeout: float = 5.0) -> Engine:
    """Create an engine from ``url`` set up for the store.

    Every wait is bounded by about ``timeout`` seconds, so that a fault
    becomes a quick 503 rather than a hung request: connecting, waiting for
    the pool, and waiting on a locked SQLite file; on PostgreSQL a
    statement or lock wait (``statement_timeout``, ``lock_timeout``) and a
    connection that stops answering (a watchdog cuts it); on MySQL and
    MariaDB lock waits and reads and writes on the connection. An in-memory
    SQLite database (``sqlite://``) is one connection that every thread
    shares, one at a time.

    :raises ValueError: if the URL cannot be parsed or has no driver here.
    """
    try:
        parsed = sa.make_url(url)
    except exc.ArgumentError:
        raise ValueError("cannot parse the database URL") from None
    shown = parsed.render_as_string(hide_password=True)
    backend = parsed.get_backend_name()
    in_memory = backend == "sqlite" and parsed.database in (None, "", ":memory:")
    options: dict[str, t.Any] = {"pool_timeout": timeout}
    if in_memory:
        # Each connection to sqlite:// is a database of its own: every
        # thread (the usage writer's too) must share the one that has the
        # tables.
        options = {
            "poolclass": SharedConnectionPool,
            "connect_args": {"timeout": timeout, "check_same_thread": False},
        }
    elif backend == "sqlite":
        options["connect_args"] = {"timeout": timeout}
    elif backend in ("postgresql", "mysql", "mariadb"):
        options["connect_args"] = _server_connect_args(parsed, timeout)
    try:
        engine = sa.create_engine(parsed, **options)
    except (exc.NoSuchModuleError, ImportError) as error:
        raise ValueError(f"no database driver for {shown}: {error}{driver_hint(parsed)}") from None
    if isinstance(engine.pool, SharedConnectionPool):
        engine.pool.timeout = timeout
    elif backend == "sqlite":
        event.listen(engine, "connect", _sqlite_setup(timeout))
    elif backend == "postgresql":
        # A little after the server's own timeouts, which end a statement
        # more gently (the connection survives).
        StatementWatchdog(engine, timeout + 0.5)
    return engine


#: What to install for the drivers the extras bring: the extra, or the package.
_DRIVERS = {
    "postgresql+psycopg": ("postgresql", "psycopg[binary]"),
    "mysql+pymysql": ("mysql", "PyMySQL"),
    "mariadb+pymysql": ("mysql", "PyMySQL"),
}


def driver_hint(url: sa.URL) -> str:
    """Say what to install where a driver of the extras is missing."""
    if url.drivername == "postgresql":  # SQLAlchemy's default there is psycopg2
        return " (the package's postgresql extra brings psycopg 3: postgresql+psycopg://...)"
    if url.drivername not in _DRIVERS:
        return ""
    extra, package = _DRIVERS[url.drivername]
    return f" (install the package's {extra} extra, or pip install '{package}')"
