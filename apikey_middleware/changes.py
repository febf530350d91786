"""Change channels: how a process learns that key rows changed elsewhere.

In ``revocation="channel"`` mode the store keeps the key rows it has read in
memory and reads a row again only when its channel says the database may
have changed since. Each channel answers :meth:`ChangeChannel.token`: a value
that changes whenever a key row may have changed, or ``None`` when the
channel cannot vouch for anything right now (the store then reads the row,
as in immediate mode). A cached row is used only under the token it was
read with.

- SQLite: ``PRAGMA data_version`` on a connection of its own. The counter
  moves when any other connection commits, and reading it takes
  microseconds, so it is read on every request: a commit is seen by the
  very next request.
- PostgreSQL (psycopg 3): ``LISTEN`` on a connection of its own, in a
  background thread. The store sends ``NOTIFY`` in the same transaction as
  every create, revoke and rotate, and a trigger on the keys table (made by
  ``create_schema()``, see :func:`install_notify_trigger`) does for any
  other SQL that changes a key, so a change is heard when it commits.
- Anything else (MySQL, MariaDB): time slices of ``poll_interval`` seconds;
  a row is read at most once per slice, so a change is seen within one.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
import typing as t
import weakref

import sqlalchemy as sa

if t.TYPE_CHECKING:
    from sqlalchemy.engine import Connection, Engine

logger = logging.getLogger("apikey_middleware")

#: The PostgreSQL notification channel the store announces changes on.
NOTIFY_CHANNEL = "apikey_changes"

#: How a store learns of revocations and other changes (see the store).
REVOCATION_MODES = ("immediate", "channel")
Revocation = t.Literal["immediate", "channel"]


def announce(connection: Connection, key_id: str) -> None:
    """Tell channel-mode processes on PostgreSQL that ``key_id`` changed.

    Sent inside the change's own transaction, so it is heard when that
    commits, and not at all if it rolls back. Whatever mode the sender runs
    in: ``apikey revoke`` must reach channel-mode servers.
    """
    if connection.dialect.name == "postgresql":
        connection.execute(sa.select(sa.func.pg_notify(NOTIFY_CHANNEL, key_id)))


# Every column but last_used_at, which the usage writer moves every second:
# announcing that would make every channel-mode process drop its rows.
_WATCHED = (
    "id, name, key_type, key_hash, key_check, scopes, owner, created_at,"
    " expires_at, revoked_at, replaces, rate_limit"
)
_NOTIFY_FUNCTION = f"""
CREATE OR REPLACE FUNCTION apikey_keys_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'TRUNCATE' THEN
        PERFORM pg_notify('{NOTIFY_CHANNEL}', '*');
    ELSIF TG_OP = 'DELETE' THEN
        PERFORM pg_notify('{NOTIFY_CHANNEL}', OLD.id);
    ELSE
        PERFORM pg_notify('{NOTIFY_CHANNEL}', NEW.id);
    END IF;
    RETURN NULL;
END $$"""
_TRIGGERS = (
    (
        "apikey_keys_changed",
        f"AFTER INSERT OR DELETE OR UPDATE OF {_WATCHED} ON {{table}} FOR EACH ROW",
    ),
    ("apikey_keys_truncated", "AFTER TRUNCATE ON {table} FOR EACH STATEMENT"),
)


def install_notify_trigger(connection: Connection, table: str = "apikey_keys") -> bool:
    """On PostgreSQL, make (or make again) the triggers that send
    ``NOTIFY apikey_changes`` for every change to the keys table, whatever
    SQL made it; elsewhere do nothing. ``True`` if installed.

    ``create_schema()`` (``apikey init-db``) calls it; with Alembic, call it
    from a migration (``install_notify_trigger(op.get_bind())``).
    """
    if connection.dialect.name != "postgresql":
        return False
    name = connection.dialect.identifier_preparer.quote(table)
    connection.exec_driver_sql(_NOTIFY_FUNCTION)
    for trigger, when in _TRIGGERS:
        connection.exec_driver_sql(f"DROP TRIGGER IF EXISTS {trigger} ON {name}")
        connection.exec_driver_sql(
            f"CREATE TRIGGER {trigger} {when.format(table=name)}"
            " EXECUTE FUNCTION apikey_keys_notify()"
        )
    return True


class ChangeChannel:
    """Tells the store whether its cached key rows may still be used."""

    def token(self) -> int | None:
        """A value that differs after any change; ``None``: do not cache."""
        raise NotImplementedError

    def close(self) -> None:
        """Release what the channel holds."""


class PollingChannel(ChangeChannel):
    """No notice of changes: cached rows last at most ``interval`` seconds."""

    def __init__(self, interval: float) -> None:
        self.interval = float(interval)

    def __repr__(self) -> str:
        return f"PollingChannel(interval={self.interval})"

    def token(self) -> int:
        return int(time.monotonic() // self.interval)


def _on_fork(channel: ChangeChannel, method: str) -> None:
    """Call ``method`` of ``channel`` in a forked child, while it lives."""
    reference = weakref.ref(channel)

    def call() -> None:
        alive = reference()
        if alive is not None:
            getattr(alive, method)()

    os.register_at_fork(after_in_child=call)


class SQLiteDataVersion(ChangeChannel):
    """``PRAGMA data_version`` of a connection that only ever reads it."""

    def __init__(self, path: str, timeout: float = 5.0) -> None:
        self.path = path
        self.timeout = timeout
        self._connection: sqlite3.Connection | None = None
        self._cursor: sqlite3.Cursor | None = None
        # Versions of two connections cannot be compared: each connection
        # adds its own epoch to the token.
        self._epoch = 0
        self._lock = threading.Lock()
        self._inherited: list[sqlite3.Connection] = []
        _on_fork(self, "_after_fork")

    def __repr__(self) -> str:
        return f"SQLiteDataVersion({self.path!r})"

    def _after_fork(self) -> None:
        # The parent's connection must not be used (nor closed) here.
        if self._connection is not None:
            self._inherited.append(self._connection)
        self._connection = self._cursor = None
        self._lock = threading.Lock()

    def token(self) -> int | None:
        with self._lock:
            try:
                cursor = self._cursor
                if cursor is None:
                    connection = sqlite3.connect(
                        self.path,
                        timeout=self.timeout,
                        isolation_level=None,
                        check_same_thread=False,
                    )
                    self._connection, self._cursor = connection, connection.cursor()
                    self._epoch += 1 << 48
                    cursor = self._cursor
                version: int = cursor.execute("PRAGMA data_version").fetchone()[0]
            except sqlite3.Error:
                self._connection = self._cursor = None
                return None
            return self._epoch + version

    def close(self) -> None:
        with self._lock:
            if self._connection is not None:
                self._connection.close()
            self._connection = self._cursor = None


class PostgresNotifications(ChangeChannel):
    """``LISTEN apikey_changes`` in a thread, on a connection of its own.

    The token moves with every notification and with every (re)connection,
    since notifications sent while not listening are lost. While the
    listener is down or has not checked its connection for two heartbeats,
    the token is ``None`` and every request reads its row: a connection that
    stops answering without closing hides changes for at most that long.
    """

    #: Heartbeats without an answer after which the listener counts as deaf.
    DEAF_AFTER = 2

    def __init__(self, engine: Engine, *, heartbeat: float = 0.5) -> None:
        self.engine = engine
        self.heartbeat = heartbeat
        self._counter = 0
        self._alive_at = -1e9
        self._started = False
        self._pid = 0
        self._thread: threading.Thread | None = None
        self._closed = False
        self._start_lock = threading.Lock()
        _on_fork(self, "_after_fork")

    def __repr__(self) -> str:
        return f"PostgresNotifications({self.engine!r})"

    def _after_fork(self) -> None:
        # The parent's thread did not come along: start afresh when asked.
        self._started = False
        self._alive_at = -1e9
        self._start_lock = threading.Lock()

    def token(self) -> int | None:
        if not self._started:
            self._start()
        if time.monotonic() - self._alive_at > self.DEAF_AFTER * self.heartbeat:
            return None
        return self._counter

    def _start(self) -> None:
        with self._start_lock:
            if self._started or self._closed:
                return
            self._started = True
            self._pid = os.getpid()
            self._thread = threading.Thread(
                target=self._listen, name="apikey-change-listener", daemon=True
            )
            self._thread.start()

    def _listen(self) -> None:
        pid = os.getpid()
        while not self._closed and self._pid == pid:
            try:
                pooled = self.engine.raw_connection()
                connection: t.Any = pooled.driver_connection
                pooled.detach()  # a connection of its own, not one of the pool's
                try:
                    self._serve(connection, pid)
                finally:
                    connection.close()
            except Exception as error:
                self._alive_at = -1e9
                logger.warning(
                    "API key change listener lost its connection, reading every request: %s",
                    type(error).__name__,
                )
                time.sleep(self.heartbeat)

    def _serve(self, connection: t.Any, pid: int) -> None:
        connection.autocommit = True
        connection.execute("SET application_name = 'apikey-change-listener'")
        connection.execute(f"LISTEN {NOTIFY_CHANNEL}")
        self._counter += 1  # what was sent before now was not heard
        while not self._closed and self._pid == pid:
            connection.execute("SELECT 1")  # fails if the connection is gone
            self._alive_at = time.monotonic()
            for _ in connection.notifies(timeout=self.heartbeat):
                self._counter += 1

    def close(self) -> None:
        self._closed = True
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=3 * self.heartbeat)


def default_revocation(engine: Engine) -> Revocation:
    """The mode a store runs in when not told: ``"channel"`` where the
    channel keeps immediate mode's guarantee (a SQLite file: the very next
    request after a commit, in any process, whatever SQL made it), else
    ``"immediate"``."""
    return "channel" if _sqlite_file(engine.url) else "immediate"


def _sqlite_file(url: sa.URL) -> bool:
    # A plain path: an in-memory database, or a "file:" URI that the change
    # connection would open as another file, has no data_version to share.
    database = url.database
    return (
        url.get_backend_name() == "sqlite"
        and database not in (None, "", ":memory:")
        and not str(database).startswith("file:")
        and "uri" not in url.query
    )


def channel_for(engine: Engine, *, poll_interval: float, timeout: float) -> ChangeChannel:
    """The best channel the engine's database offers."""
    url = engine.url
    backend = url.get_backend_name()
    if _sqlite_file(url):
        return SQLiteDataVersion(t.cast(str, url.database), timeout)
    if backend == "postgresql" and url.get_driver_name() == "psycopg":
        return PostgresNotifications(engine)
    return PollingChannel(poll_interval)
