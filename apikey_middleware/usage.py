"""The usage log writer: requests are logged off the request thread, in batches.

A request only counts itself in a bounded buffer: identical requests (same
key, method, path, status and address, in the same minute) share one
buffered row that says how many they were, so a client calling one
endpoint many times a minute costs one row, and one dictionary lookup per
request. A background thread writes the buffer to the store every
``interval`` seconds, or sooner once ``batch_size`` rows are waiting. What
cannot be buffered (the database is away for long and the buffer is full)
is dropped, counted and reported through :mod:`logging`; a failed write is
retried on the next flush, as the same batch with the same id, so that a
write that committed but whose answer was lost is not counted twice.
Nothing here can fail a request.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
import time
import weakref
from datetime import datetime, timedelta

from sqlalchemy import exc

from ._checks import integer, number
from ._time import utcnow
from .schema import MAX_PATH_LENGTH
from .usage_records import Batch, Group, RefusedTargets, batches_of, size_of
from .usage_records import UsageRecord as UsageRecord
from .usage_records import UsageSink as UsageSink

logger = logging.getLogger("apikey_middleware")


MAX_METHOD_LENGTH = 16
MAX_ADDRESS_LENGTH = 64
#: Distinct methods and paths of a key's refused requests logged as they are,
#: per minute and process (for the last 4096 keys refused); the rest are
#: logged as ``*`` ``*``.
REFUSED_TARGETS = 20
#: How long :meth:`UsageWriter.close` retries a failed write.
CLOSE_RETRY_SECONDS = 5.0


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

    :param store: where the rows go (its ``record_usage``).
    :param max_pending: the most rows held in memory (identical requests
        of a minute are one row); requests that would make more are dropped
        and counted.
    :param max_pending_bytes: the most memory those rows may take, roughly;
        method, path and address are cut to their column sizes when a row
        is recorded, so a long path cannot make a row large.
    :param batch_size: rows that wake the writer before ``interval`` is up,
        and the most written in one transaction.
    :param interval: seconds between writes while rows are waiting.
    :param retention: how long usage is kept: the writer deletes older
        usage (the store's ``prune_usage``) when it starts and then at most
        once an hour. ``None``: kept until pruned by hand.
    """

    def __init__(
        self,
        store: UsageSink,
        *,
        max_pending: int = 100_000,
        max_pending_bytes: int = 32 * 1024 * 1024,
        batch_size: int = 10_000,
        interval: float = 1.0,
        retention: timedelta | None = None,
    ) -> None:
        integer("max_pending", max_pending)
        integer("max_pending_bytes", max_pending_bytes)
        integer("batch_size", batch_size)
        number("interval", interval)
        if retention is not None:
            if not isinstance(retention, timedelta) or retention <= timedelta(0):
                raise ValueError("retention must be a positive timedelta")
            if not callable(getattr(store, "prune_usage", None)):
                raise ValueError("this usage store cannot prune: give retention=None")
        self.retention = retention
        self.store = store
        self.max_pending = max_pending
        self.max_pending_bytes = max_pending_bytes
        self.batch_size = batch_size
        self.interval = float(interval)
        #: Rows dropped because the buffer was full, since the start.
        self.dropped = 0
        #: Rows written (requests logged), since the start.
        self.written = 0
        self._groups: dict[Group, list[float]] = {}
        self._refused = RefusedTargets(REFUSED_TARGETS)
        self._pending_bytes = 0  # of the buffer and of the batches in flight
        # Taken from the buffer for a write not yet done: requests, and rows.
        self._in_flight = 0
        self._in_flight_rows = 0
        self._retry: list[Batch] = []  # batches whose write failed, in order
        self._next_prune = 0.0  # time.monotonic() of the next pruning
        self._pruner: threading.Thread | None = None
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
        """Requests logged and not yet written (a write under way included)."""
        with self._state_lock:
            return self._buffered() + self._in_flight

    def _buffered(self) -> int:
        """Requests the buffered rows stand for (under the state lock)."""
        return sum(int(count[1]) for count in self._groups.values())

    @property
    def running(self) -> bool:
        """Whether the writer thread is alive (it starts with the first row)."""
        thread = self._thread
        return thread is not None and thread.is_alive()

    @property
    def pending_bytes(self) -> int:
        """Roughly the memory the buffered rows take (a write under way
        included)."""
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

        ``path`` is the raw ``PATH_INFO`` (a WSGI string: the path's bytes
        as Latin-1); it is stored percent-encoded to ASCII, as it was on the
        wire, with anything shaped like a key masked. ``accepted`` says
        whether the key was accepted for the request; only those requests
        move the key's ``last_used_at``.
        """
        now = time.time()
        minute = int(now) // 60
        if accepted:
            # Most requests repeat one buffered this minute: one lookup. A
            # long field never matches here (rows keep them cut), so it is
            # cut and looked up below.
            with self._state_lock:
                count = self._groups.get((key_id, minute, method, path, status, remote_addr))
                if count is not None and not self._closed:
                    count[1] += 1
                    count[2] = now
                    return
        self._add(key_id, minute, method, path, status, remote_addr, accepted, now)

    def _add(
        self,
        key_id: str,
        minute: int,
        method: str,
        path: str,
        status: int,
        remote_addr: str | None,
        accepted: bool,
        now: float,
    ) -> None:
        # Cut only what is long: most requests need no copy.
        if len(method) > MAX_METHOD_LENGTH:
            method = method[:MAX_METHOD_LENGTH]
        if len(path) > MAX_PATH_LENGTH:
            path = path[:MAX_PATH_LENGTH]
        if remote_addr is not None and len(remote_addr) > MAX_ADDRESS_LENGTH:
            remote_addr = remote_addr[:MAX_ADDRESS_LENGTH]
        with self._state_lock:
            if not accepted:
                method, path, remote_addr = self._refused.target(
                    key_id, minute, method, path, remote_addr
                )
            group = (key_id, minute, method, path, status, remote_addr)
            count = self._groups.get(group)
            if count is not None and not self._closed:
                count[1] += 1
                if accepted:
                    count[2] = now
                return
            size = size_of(method, path, remote_addr)
            if (
                self._closed
                or len(self._groups) + self._in_flight_rows >= self.max_pending
                or self._pending_bytes + size > self.max_pending_bytes
            ):
                self.dropped += 1
                return
            self._pending_bytes += size
            self._groups[group] = [now, 1, now if accepted else 0.0]
            rows = len(self._groups)
        if self._thread is None:
            self._start()
        elif rows >= self.batch_size:
            self._wake.set()

    def _start(self) -> None:
        with self._state_lock:
            if self._thread is None and not self._closed:
                self._thread = threading.Thread(
                    target=self._run, name="apikey-usage-writer", daemon=True
                )
                self._thread.start()

    def _after_fork(self) -> None:
        # The parent's rows, and their counts, are the parent's.
        self.written = self.dropped = self._reported_drops = 0
        self._write_lock = threading.Lock()
        self._state_lock = threading.Lock()
        self._wake = threading.Event()
        self._thread = self._pruner = None
        self._groups = {}
        self._pending_bytes = 0
        self._in_flight = 0
        self._in_flight_rows = 0
        self._retry = []

    def _run(self) -> None:
        while not self._closed:
            try:
                self._prune_if_due()
            except Exception:  # pragma: no cover - the writer must outlive any surprise
                logger.exception("usage retention failed; the writer keeps running")
            self._wake.wait(self.interval)
            self._wake.clear()
            try:
                self.flush()
            except Exception:  # the writer must outlive any surprise
                logger.exception("usage log writer failed; it keeps running")

    def _prune_if_due(self) -> None:
        """Start deleting usage older than :attr:`retention`, at most once an
        hour, in a thread of its own: a large prune takes minutes, and the
        writer's writes go on meanwhile."""
        if self.retention is None or time.monotonic() < self._next_prune:
            return
        pruner = self._pruner
        if pruner is not None and pruner.is_alive():
            return
        self._next_prune = time.monotonic() + 3600
        before = utcnow() - self.retention
        self._pruner = threading.Thread(
            target=self._prune, args=(before,), name="apikey-usage-pruner", daemon=True
        )
        self._pruner.start()

    def _prune(self, before: datetime) -> None:
        try:
            deleted = self.store.prune_usage(before)  # type: ignore[attr-defined]
        except Exception as error:
            logger.error(
                "could not delete old usage, will try in an hour: %s: %s",
                type(error).__name__,
                _cause(error),
            )
            return
        if deleted:
            logger.info("deleted %d usage rows older than the retention", deleted)

    def flush(self) -> None:
        """Write the rows buffered when it is called. Never raises.

        Rows that come while it writes wait for the next flush: else, under
        a steady load, the writer would write a few rows at a time with
        hardly a pause, a transaction each, competing with the requests.
        """
        with self._write_lock:
            self._retry += self._take()
            while self._retry:
                unwritten = self._write(self._retry[0])
                if unwritten:
                    # The same rows with the same ids, first, next time.
                    self._retry[:1] = unwritten
                    break
                del self._retry[0]
            if self.dropped != self._reported_drops:
                logger.warning(
                    "usage log buffer full: %d rows dropped so far",
                    self.dropped,
                )
                self._reported_drops = self.dropped

    def _take(self) -> list[Batch]:
        """The buffer's rows, as batches of records of ``batch_size`` at most.

        Their requests, rows and bytes stay counted against the bounds
        until written.
        """
        with self._state_lock:
            groups, self._groups = self._groups, {}
            self._in_flight_rows += len(groups)
        # Only requests holding the lock count in a row, and they find the
        # new buffer: these rows can be made into batches without holding it.
        batches = batches_of(groups, self.batch_size)
        with self._state_lock:
            self._in_flight += sum(batch.requests for batch in batches)
        return batches

    def _done(self, batch: Batch, *, dropped: int = 0) -> None:
        with self._state_lock:
            self._in_flight -= batch.requests
            self._in_flight_rows -= len(batch.records)
            self._pending_bytes -= batch.size
            self.written += batch.requests - dropped
            self.dropped += dropped

    def _write(self, batch: Batch) -> list[Batch]:
        """Write ``batch``; what is left to write after a failure."""
        try:
            self.store.record_usage(batch.records, last_used=batch.last_used, batch_id=batch.id)
        except (exc.DataError, exc.IntegrityError, ValueError, ArithmeticError) as error:
            # The database (or its driver, binding a value) refuses a row
            # itself, not the connection, and the transaction is undone:
            # write the others, and drop (and count) only the rows it
            # refuses, or one such row would stop the log for good.
            if len(batch.records) == 1:
                self._done(batch, dropped=batch.requests)
                logger.error("dropped a usage row the database refused: %s", _cause(error))
                return []
            unwritten: list[Batch] = []
            for half in batch.halves():
                unwritten.extend([half] if unwritten else self._write(half))
            return unwritten
        except Exception as error:
            logger.error(
                "could not write %d usage rows, will retry: %s: %s",
                batch.requests,
                type(error).__name__,
                _cause(error),
            )
            return [batch]
        self._done(batch)
        return []

    def close(self) -> None:
        """Flush and stop the writer thread; safe to call twice. A failed
        write is retried for up to :data:`CLOSE_RETRY_SECONDS`; rows that
        could not be written by then are counted as dropped, and said so
        (some may have been stored, if a commit's answer was lost)."""
        self._closed = True
        self._wake.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=max(5.0, self.interval * 2))
        self.flush()
        # Retrying is safe (a batch's id is written with it), and a write
        # whose commit's answer was lost is counted once it is retried.
        deadline = time.monotonic() + CLOSE_RETRY_SECONDS
        pause = 0.05
        while self._retry and time.monotonic() + pause < deadline:
            time.sleep(pause)
            pause = min(pause * 2, 1.0)
            self.flush()
        with self._write_lock:
            lost = sum(batch.requests for batch in self._retry)
            for batch in self._retry:
                self._done(batch, dropped=batch.requests)
            self._retry = []
            with self._state_lock:
                # Recorded while the last flush wrote.
                left = self._buffered()
                lost += left
                self.dropped += left
                self._groups = {}
                self._pending_bytes = 0
        if lost:
            logger.error("usage log closed with %d rows it could not write: they are lost", lost)
