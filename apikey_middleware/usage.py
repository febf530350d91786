"""The usage log writer: requests are logged off the request thread, in batches.

A request only appends a tuple to a bounded buffer. A background thread
writes the buffer to the store every ``interval`` seconds, or sooner once
``batch_size`` rows are waiting. What cannot be buffered (the database is
away for long and the buffer is full) is dropped, counted and reported
through :mod:`logging`; a failed write is retried on the next flush. Nothing
here can fail a request.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
import time
import typing as t
import weakref
from collections import deque
from datetime import UTC, datetime

from .store import MAX_PATH_LENGTH, UsageRecord

if t.TYPE_CHECKING:
    from .store import SQLAlchemyKeyStore

logger = logging.getLogger("apikey_middleware")


# A logged request as the request thread leaves it: the time as a float, made
# into a datetime only when the writer writes it, and whether the key was
# accepted (only those move last_used_at).
_Pending = tuple[str, float, str, str, int, str | None, bool]

# What a buffered row costs beyond its strings: the tuple, its float, int
# and bool, and the strings' own headers (CPython, 64-bit, roughly).
_ROW_OVERHEAD = 250
MAX_METHOD_LENGTH = 16
MAX_ADDRESS_LENGTH = 64


def _cause(error: Exception) -> str:
    """The first line of what the driver said, for the log (never a key:
    usage rows hold ids, paths and addresses only)."""
    cause = getattr(error, "orig", None) or error
    return (str(cause).strip().splitlines() or [type(cause).__name__])[0][:200]


def _call_if_alive(reference: weakref.ref[UsageWriter], method: str) -> None:
    writer = reference()
    if writer is not None:
        getattr(writer, method)()


class UsageWriter:
    """Buffers usage rows and writes them to ``store`` in batches.

    :param store: where the rows go.
    :param max_pending: the most rows held in memory; more are dropped and
        counted.
    :param max_pending_bytes: the most memory those rows may take, roughly;
        method, path and address are cut to their column sizes when a row
        is recorded, so a long path cannot make a row large.
    :param batch_size: rows that wake the writer before ``interval`` is up,
        and the most written in one transaction.
    :param interval: seconds between writes while rows are waiting.
    """

    def __init__(
        self,
        store: SQLAlchemyKeyStore,
        *,
        max_pending: int = 100_000,
        max_pending_bytes: int = 32 * 1024 * 1024,
        batch_size: int = 1000,
        interval: float = 1.0,
    ) -> None:
        for name, value in (
            ("max_pending", max_pending),
            ("max_pending_bytes", max_pending_bytes),
            ("batch_size", batch_size),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, not {value!r}")
        if not isinstance(interval, int | float) or interval <= 0:
            raise ValueError(f"interval must be a positive number of seconds, not {interval!r}")
        self.store = store
        self.max_pending = max_pending
        self.max_pending_bytes = max_pending_bytes
        self.batch_size = batch_size
        self.interval = float(interval)
        #: Rows dropped because the buffer was full, since the start.
        self.dropped = 0
        #: Rows written, since the start.
        self.written = 0
        self._pending: deque[_Pending] = deque()
        self._pending_bytes = 0
        self._in_flight = 0  # rows taken from the buffer for a write not yet done
        self._wake = threading.Event()
        self._write_lock = threading.Lock()
        self._state_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._closed = False
        self._reported_drops = 0
        # At exit: flush. In a forked child (a pre-forking server): start
        # afresh, since the parent's thread and locks do not come along.
        # Neither hook keeps the writer alive.
        reference = weakref.ref(self)
        atexit.register(_call_if_alive, reference, "close")
        os.register_at_fork(after_in_child=lambda: _call_if_alive(reference, "_after_fork"))

    def __repr__(self) -> str:
        return f"UsageWriter(pending={self.pending}, dropped={self.dropped})"

    @property
    def pending(self) -> int:
        """Rows buffered and not yet written (a write under way included)."""
        return len(self._pending) + self._in_flight

    @property
    def pending_bytes(self) -> int:
        """Roughly the memory the buffered rows take."""
        return self._pending_bytes

    def record(
        self,
        key_id: str,
        method: str,
        path: str,
        status: int,
        remote_addr: str | None,
        accepted: bool = True,
    ) -> None:
        """Log one request; called on the request path, so cheap.

        ``accepted`` says whether the key was accepted for it; only those
        requests move the key's ``last_used_at``.
        """
        method = method[:MAX_METHOD_LENGTH]
        path = path[:MAX_PATH_LENGTH]
        if remote_addr is not None:
            remote_addr = remote_addr[:MAX_ADDRESS_LENGTH]
        size = _ROW_OVERHEAD + len(path) + len(method) + len(remote_addr or "")
        with self._state_lock:
            if (
                self._closed
                or len(self._pending) >= self.max_pending
                or self._pending_bytes + size > self.max_pending_bytes
            ):
                self.dropped += 1
                return
            self._pending_bytes += size
            self._pending.append((key_id, time.time(), method, path, status, remote_addr, accepted))
        if self._thread is None:
            self._start()
        elif len(self._pending) >= self.batch_size:
            self._wake.set()

    @staticmethod
    def _size(row: _Pending) -> int:
        return _ROW_OVERHEAD + len(row[3]) + len(row[2]) + len(row[5] or "")

    def _start(self) -> None:
        with self._state_lock:
            if self._thread is None and not self._closed:
                self._thread = threading.Thread(
                    target=self._run, name="apikey-usage-writer", daemon=True
                )
                self._thread.start()

    def _after_fork(self) -> None:
        self._write_lock = threading.Lock()
        self._state_lock = threading.Lock()
        self._wake = threading.Event()
        self._thread = None

    def _run(self) -> None:
        while not self._closed:
            self._wake.wait(self.interval)
            self._wake.clear()
            try:
                self.flush()
            except Exception:  # the writer must outlive any surprise
                logger.exception("usage log writer failed; it keeps running")

    def flush(self) -> None:
        """Write every buffered row now. Never raises."""
        with self._write_lock:
            while self._pending:
                batch: list[_Pending] = []
                with self._state_lock:
                    while self._pending and len(batch) < self.batch_size:
                        row = self._pending.popleft()
                        self._pending_bytes -= self._size(row)
                        batch.append(row)
                self._in_flight = len(batch)
                try:
                    if not self._write(batch):
                        break
                finally:
                    self._in_flight = 0
            if self.dropped != self._reported_drops:
                logger.warning(
                    "usage log buffer full: %d rows dropped so far",
                    self.dropped,
                )
                self._reported_drops = self.dropped

    def _write(self, batch: list[_Pending]) -> bool:
        records = []
        last_used: dict[str, datetime] = {}
        for key_id, at, method, path, status, addr, accepted in batch:
            when = datetime.fromtimestamp(at, UTC)
            records.append(UsageRecord(key_id, when, method, path, status, addr))
            if accepted and (key_id not in last_used or last_used[key_id] < when):
                last_used[key_id] = when
        try:
            self.store.record_usage(records, last_used=last_used)
        except Exception as error:
            # Back to the front of the line, as far as room allows; the
            # rest is dropped and counted.
            with self._state_lock:
                room = max(0, self.max_pending - len(self._pending))
                kept = batch[:room]
                self._pending.extendleft(reversed(kept))
                self._pending_bytes += sum(self._size(row) for row in kept)
                self.dropped += len(batch) - len(kept)
            logger.error(
                "could not write %d usage rows, will retry: %s: %s",
                len(batch),
                type(error).__name__,
                _cause(error),
            )
            return False
        self.written += len(batch)
        return True

    def close(self) -> None:
        """Flush and stop the writer thread; safe to call twice."""
        self._closed = True
        self._wake.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=max(5.0, self.interval * 2))
        self.flush()
