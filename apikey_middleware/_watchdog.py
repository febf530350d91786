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

if t.TYPE_CHECKING:
    from sqlalchemy.engine import Engine


class StatementWatchdog:
    """Cuts the connection of any statement of ``engine`` older than ``timeout``."""

    def __init__(self, engine: Engine, timeout: float) -> None:
        self.timeout = timeout
        self._tick = min(0.25, timeout / 4)
        # id(cursor) -> (deadline, socket file descriptor)
        self._under_way: dict[int, tuple[float, int]] = {}
        # Held while an entry is removed, so the watchdog never shuts down a
        # descriptor whose statement ended (and whose socket may be gone).
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._cut = 0
        event.listen(engine, "before_cursor_execute", self._before)
        event.listen(engine, "after_cursor_execute", self._after)
        event.listen(engine, "handle_error", self._failed)
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

    def _before(
        self,
        conn: t.Any,
        cursor: t.Any,
        statement: str,
        parameters: t.Any,
        context: t.Any,
        executemany: bool,
    ) -> None:
        fileno = getattr(conn.connection.dbapi_connection, "fileno", None)
        if fileno is None:
            return
        entry = (time.monotonic() + self.timeout, fileno())
        with self._lock:
            self._under_way[id(cursor)] = entry
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._watch, name="apikey-statement-watchdog", daemon=True
                )
                self._thread.start()

    def _after(self, conn: t.Any, cursor: t.Any, *args: t.Any) -> None:
        with self._lock:
            self._under_way.pop(id(cursor), None)

    def _failed(self, context: t.Any) -> None:
        cursor = getattr(context, "cursor", None)  # none for a failed connect
        if cursor is not None:
            with self._lock:
                self._under_way.pop(id(cursor), None)

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
                late = [key for key, (deadline, _) in self._under_way.items() if deadline < now]
                for key in late:
                    _, descriptor = self._under_way.pop(key)
                    self._shut_down(descriptor)

    def _shut_down(self, descriptor: int) -> None:
        self._cut += 1
        with contextlib.suppress(OSError):
            sock = socket.socket(fileno=os.dup(descriptor))
            try:
                sock.shutdown(socket.SHUT_RDWR)
            finally:
                sock.close()
