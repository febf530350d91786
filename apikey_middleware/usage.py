"""The usage log writer: requests are logged off the request thread, in batches.

A request only leaves itself in a bounded buffer
(:mod:`~apikey_middleware.usage_buffer`), where identical requests of a
minute share one row. A background thread writes the buffer to the store
every ``interval`` seconds, or sooner once ``batch_size`` rows are waiting.
What cannot be buffered (the database is away for long and the buffer is
full) is dropped, counted and reported through :mod:`logging`; a failed write is
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

from ._checks import number
from ._time import utcnow
from .usage_buffer import MAX_ADDRESS_LENGTH as MAX_ADDRESS_LENGTH
from .usage_buffer import MAX_METHOD_LENGTH as MAX_METHOD_LENGTH
from .usage_buffer import REFUSED_TARGETS as REFUSED_TARGETS
from .usage_buffer import UsageBuffer
from .usage_records import Batch
from .usage_records import UsageRecord as UsageRecord
from .usage_records import UsageSink as UsageSink

logger = logging.getLogger("apikey_middleware")


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


class UsageWriter(UsageBuffer):
    """Buffers usage rows and writes them to ``store`` in batches.

    :param store: where the rows go (its ``record_usage``).
    :param max_pending: the most rows held in memory (identical requests
        of a minute are one row); requests that would make more are dropped
        and counted.
    :param max_pending_bytes: the most memory those rows may take, roughly;
        method, path and address are cut to their column sizes when a row
        is recorded, so a long path cannot make a row large. Requests that
        wait to be counted into the buffer (at most
        :data:`~apikey_middleware.usage_buffer.LANE_LENGTH`) may take as
        much again.
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
        number("interval", interval)
        if retention is not None:
            if not isinstance(retention, timedelta) or retention <= timedelta(0):
                raise ValueError("retention must be a positive timedelta")
            if not callable(getattr(store, "prune_usage", None)):
                raise ValueError("this usage store cannot prune: give retention=None")
        super().__init__(
            max_pending=max_pending, max_pending_bytes=max_pending_bytes, batch_size=batch_size
        )
        self.retention = retention
        self.store = store
        self.interval = float(interval)
        self._retry: list[Batch] = []  # batches whose write failed, in order
        self._next_prune = 0.0  # time.monotonic() of the next pruning
        self._pruner: threading.Thread | None = None
        self._write_lock = threading.Lock()
        self._thread: threading.Thread | None = None
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
    def running(self) -> bool:
        """Whether the writer thread is alive (it starts with the first row)."""
        thread = self._thread
        return thread is not None and thread.is_alive()

    def _start(self) -> None:
        """Start the writer's thread, once, unless closed."""
        with self._state_lock:
            if self._thread is None and not self._closed:
                self._thread = threading.Thread(
                    target=self._run, name="apikey-usage-writer", daemon=True
                )
                self._thread.start()
                self._lane_open = True

    def _after_fork(self) -> None:
        self._reset()
        self._reported_drops = 0
        self._write_lock = threading.Lock()
        self._thread = self._pruner = None
        self._retry = []

    def _run(self) -> None:
        due = time.monotonic() + self.interval
        while not self._closed:
            try:
                self._prune_if_due()
            except Exception:  # pragma: no cover - the writer must outlive any surprise
                logger.exception("usage retention failed; the writer keeps running")
            self._wake.wait(max(0.0, due - time.monotonic()))
            self._wake.clear()
            if time.monotonic() < due and not self._closed:
                # Woken early, by a batch's worth of rows or of requests in
                # the lane (which may be fewer rows): write only the former.
                self._drain()
                if len(self._groups) < self.batch_size:
                    continue
            try:
                self.flush()
            except Exception:  # the writer must outlive any surprise
                logger.exception("usage log writer failed; it keeps running")
            due = time.monotonic() + self.interval

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
            if self._dropped != self._reported_drops:
                logger.warning(
                    "usage log: %d rows dropped so far (its buffer was full, or it was closed)",
                    self._dropped,
                )
                self._reported_drops = self._dropped

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
        with self._state_lock:  # not while the thread starts
            self._closed = True
            self._lane_open = False
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
            # Recorded while the last flush wrote.
            self._drain()
            with self._state_lock:
                left = self._buffered()
                lost += left
                self._dropped += left
                self._groups = {}
                self._pending_bytes = 0
                self._finished = True
        if lost:
            logger.error("usage log closed with %d rows it could not write: they are lost", lost)
