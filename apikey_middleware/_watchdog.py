"""A deadline for every statement, where the driver itself has none.

PostgreSQL's ``statement_timeout`` and ``lock_timeout`` end a statement
that runs or waits too long on the server, but they cannot help when the
connection itself stops answering (a frozen peer, a proxy that stopped
forwarding: the kernel still acknowledges what is sent, so TCP timeouts
never fire either). The watchdog remembers the socket of each statement
under way and shuts it down once the statement outlives its deadline: the
driver's blocked read returns at once with an error, SQLAlchemy throws the
connection away, and the request gets its 503.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
import typing as t
import weakref

from sqlalchemy import event
from sqlalchemy.engine import Engine

_WATCHDOGS: weakref.WeakKeyDictionary[Engine, StatementWatchdog] = weakref.WeakKeyDictionary()


def watchdog_of(engine: Engine) -> StatementWatchdog | None:
    """The watchdog set on ``engine``, if any."""
    return _WATCHDOGS.get(engine)


class StatementWatchdog:
    """Cuts the connection of any statement of ``engine`` older than ``timeout``.

    Entries are kept by DBAPI connection and dropped when its statement
    ends, fails, or the connection goes back to the pool or is closed; and
    the socket is checked to still be that connection's before it is shut
    down. A descriptor is never shut down once its connection is done with
    it, so a number the system reuses for another socket is never touched.
    """

    def __init__(self, engine: Engine, timeout: float) -> None:
        self.timeout = timeout
        self._tick = min(0.25, timeout / 4)
        # id(DBAPI connection) -> (deadline, socket descriptor, connection)
        self._under_way: dict[int, tuple[float, int, weakref.ref[t.Any]]] = {}
        # Held whenever an entry changes, so the watchdog never acts on an
        # entry whose statement has ended meanwhile.
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._cut = 0
        _WATCHDOGS[engine] = self
        event.listen(engine, "before_cursor_execute", self._before)
        event.listen(engine, "after_cursor_execute", self._after)
        event.listen(engine, "handle_error", self._failed)
        for name in ("checkin", "invalidate", "soft_invalidate", "close", "detach"):
            event.listen(engine, name, self._released)
        reference = weakref.ref(self)

        def after_fork() -> None:
            watchdog = reference()
            if watchdog is not None:
                watchdog._lock = threading.Lock()
                watchdog._under_way.clear()
                watchdog._thread = None

        os.register_at_fork(after_in_child=after_fork)

    def __repr__(self) -> str:
        return f"StatementWatchdog(timeout={self.timeout})"

    @property
    def cut(self) -> int:
        """How many connections it has cut, since the start."""
        return self._cut

    @property
    def watched(self) -> int:
        """How many statements it is watching now."""
        return len(self._under_way)

    def _before(
        self,
        conn: t.Any,
        cursor: t.Any,
        statement: str,
        parameters: t.Any,
        context: t.Any,
        executemany: bool,
    ) -> None:
        dbapi = conn.connection.dbapi_connection
        fileno = getattr(dbapi, "fileno", None)
        if fileno is None:
            return
        entry = (time.monotonic() + self.timeout, fileno(), weakref.ref(dbapi))
        with self._lock:
            self._under_way[id(dbapi)] = entry
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._watch, name="apikey-statement-watchdog", daemon=True
                )
                self._thread.start()

    def _forget(self, dbapi: object) -> None:
        with self._lock:
            self._under_way.pop(id(dbapi), None)

    def _after(self, conn: t.Any, *args: t.Any) -> None:
        self._forget(conn.connection.dbapi_connection)

    def _failed(self, context: t.Any) -> None:
        connection = getattr(context, "connection", None)  # none for a failed connect
        dbapi = getattr(getattr(connection, "connection", None), "dbapi_connection", None)
        if dbapi is not None:
            self._forget(dbapi)

    def _released(self, dbapi: object, *args: t.Any) -> None:
        self._forget(dbapi)

    def _watch(self) -> None:
        idle = 0
        while True:
            time.sleep(self._tick)
            now = time.monotonic()
            with self._lock:
                if not self._under_way:
                    # Nothing to watch for a while: the thread ends, and
                    # the next statement starts another.
                    idle += 1
                    if idle >= 20:
                        self._thread = None
                        return
                    continue
                idle = 0
                late = [key for key, entry in self._under_way.items() if entry[0] < now]
                for key in late:
                    _, descriptor, reference = self._under_way.pop(key)
                    if self._still_its_socket(reference, descriptor):
                        self._shut_down(descriptor)

    @staticmethod
    def _still_its_socket(reference: weakref.ref[t.Any], descriptor: int) -> bool:
        dbapi = reference()
        if dbapi is None:
            return False
        try:
            return bool(dbapi.fileno() == descriptor)
        except Exception:  # a closed connection has no descriptor any more
            return False

    def _shut_down(self, descriptor: int) -> None:
        self._cut += 1
        with contextlib.suppress(OSError):
            sock = socket.socket(fileno=os.dup(descriptor))
            try:
                sock.shutdown(socket.SHUT_RDWR)
            finally:
                sock.close()
