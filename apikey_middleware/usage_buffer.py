"""The usage log's buffer: what requests leave for the writer, bounded.

Identical requests (same key, method, path, status and address, in the
same minute) share one buffered row that says how many they were, so a
client calling one endpoint many times a minute costs one row. An accepted
request only appends itself to a bounded list, the lane, with no lock
taken; the writer's thread counts the lane into the buffer, where the
buffer's bounds apply. A request counts itself into the buffer, under its
lock, when it was refused (its target may be logged as ``*``), when a field
is long, or when the lane is full. What the bounds cannot hold is dropped
and counted.
"""

from __future__ import annotations

import threading
import time

from ._checks import integer
from .schema import MAX_PATH_LENGTH
from .usage_records import Batch, Group, RefusedTargets, batches_of, size_of, status_code

MAX_METHOD_LENGTH = 16
MAX_ADDRESS_LENGTH = 64
#: Distinct methods and paths of a key's refused requests logged as they are,
#: per minute and process (for the last 4096 keys refused); the rest are
#: logged as ``*`` ``*``.
REFUSED_TARGETS = 20
#: Accepted requests that may wait in the lane for the writer's next turn
#: (fewer if the buffer's bounds are small). Only short paths wait so.
LANE_LENGTH = 8192
LANE_PATH_LENGTH = 256
LANE_STATUS_LENGTH = 64
# The most a waiting request takes, its strings included (CPython, 64-bit).
_LANE_ENTRY_BYTES = 2560
#: Requests counted from the lane in one hold of the buffer's lock: a
#: request that needs the lock waits for one such chunk at most.
DRAIN_CHUNK = 256


class UsageBuffer:
    """Logged requests waiting to be written, within bounds; the base of
    :class:`~apikey_middleware.usage.UsageWriter`, which starts its thread
    with the first request (``_start``) and writes what it takes
    (``_take``).

    Its parameters are the writer's, described there.
    """

    def __init__(self, *, max_pending: int, max_pending_bytes: int, batch_size: int) -> None:
        integer("max_pending", max_pending)
        integer("max_pending_bytes", max_pending_bytes)
        integer("batch_size", batch_size)
        self.max_pending = max_pending
        self.max_pending_bytes = max_pending_bytes
        self.batch_size = batch_size
        self._lane_length = min(LANE_LENGTH, max_pending, max_pending_bytes // _LANE_ENTRY_BYTES)
        # A batch's worth of requests in the lane may be as many new rows.
        self._lane_wake = min(batch_size, self._lane_length) - 1
        self._closed = False
        self._finished = False  # closed, and its last rows written or dropped
        self._reset()

    def _reset(self) -> None:
        """Empty, with new locks: at the start, and in a forked child (the
        parent's rows, and their counts, are the parent's)."""
        self._state_lock = threading.Lock()
        self._wake = threading.Event()
        #: Requests written, since the start.
        self.written = 0
        self._dropped = 0
        self._groups: dict[Group, list[float]] = {}
        # Accepted requests not yet counted into the buffer, as record()'s
        # arguments: appending to a list is atomic, and only the drain
        # takes from it, its front. Open while the writer runs.
        self._lane: list[tuple[str, str, str, int | str, str | None, float]] = []
        self._lane_open = False
        self._refused = RefusedTargets(REFUSED_TARGETS)
        self._pending_bytes = 0  # of the buffer and of the batches in flight
        # Taken from the buffer for a write not yet done: requests, and rows.
        self._in_flight = 0
        self._in_flight_rows = 0

    def _start(self) -> None:
        """Start the writer, which opens the lane, unless closed."""
        raise NotImplementedError

    @property
    def pending(self) -> int:
        """Requests logged and not yet written (a write under way included)."""
        self._drain()
        with self._state_lock:
            return self._buffered() + self._in_flight + len(self._lane)

    @property
    def dropped(self) -> int:
        """Requests not logged since the start: the buffer was full, or the
        database refused their row."""
        self._drain()
        with self._state_lock:
            return self._dropped

    def _buffered(self) -> int:
        """Requests the buffered rows stand for (under the state lock)."""
        return sum(int(count[1]) for count in self._groups.values())

    @property
    def pending_bytes(self) -> int:
        """Roughly the memory the buffered rows take (a write under way
        included)."""
        self._drain()
        with self._state_lock:
            return self._pending_bytes

    def record(
        self,
        key_id: str,
        method: str,
        path: str,
        status: int | str,
        remote_addr: str | None,
        accepted: bool = True,
    ) -> None:
        """Log one request; called on the request path, so cheap.

        ``status`` is the response's code, or the status line the app
        started it with (read off the request path; 0 if it holds no code).

        ``path`` is the raw ``PATH_INFO`` (a WSGI string: the path's bytes
        as Latin-1); it is stored percent-encoded to ASCII, as it was on the
        wire, with anything shaped like a key masked. ``accepted`` says
        whether the key was accepted for the request; only those requests
        move the key's ``last_used_at``.
        """
        now = time.time()
        lane = self._lane
        waiting = len(lane)
        if (
            accepted
            and self._lane_open
            and waiting < self._lane_length
            and len(path) <= LANE_PATH_LENGTH
            and len(method) <= MAX_METHOD_LENGTH
            and (remote_addr is None or len(remote_addr) <= MAX_ADDRESS_LENGTH)
            and (type(status) is int or (type(status) is str and len(status) <= LANE_STATUS_LENGTH))
        ):
            lane.append((key_id, method, path, status, remote_addr, now))
            if waiting >= self._lane_wake and not self._wake.is_set():
                # Each may be a new row: a batch's worth wake the writer.
                self._wake.set()
            return
        self._add(key_id, int(now) // 60, method, path, status, remote_addr, accepted, now)

    def _add(
        self,
        key_id: str,
        minute: int,
        method: str,
        path: str,
        status: int | str,
        remote_addr: str | None,
        accepted: bool,
        now: float,
    ) -> None:
        if type(status) is not int:
            status = status_code(status)
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
            if self._closed:
                self._dropped += 1
                return
            self._admit((key_id, minute, method, path, status, remote_addr), accepted, now)
            rows = len(self._groups)
        if not self._lane_open:
            self._start()
        elif rows >= self.batch_size:
            self._wake.set()

    def _admit(self, group: Group, accepted: bool, now: float) -> list[float] | None:
        """Count a request into the buffer, within its bounds (under the
        state lock); its row's count, or ``None`` if it was dropped."""
        count = self._groups.get(group)
        if count is not None:
            count[1] += 1
            # Requests from the lane may come a little out of order.
            count[0] = min(count[0], now)
            if accepted and now > count[2]:
                count[2] = now
            return count
        _, _, method, path, _, remote_addr = group
        size = size_of(method, path, remote_addr)
        if (
            len(self._groups) + self._in_flight_rows >= self.max_pending
            or self._pending_bytes + size > self.max_pending_bytes
        ):
            self._dropped += 1
            return None
        self._pending_bytes += size
        count = self._groups[group] = [now, 1, now if accepted else 0.0]
        return count

    def _drain(self) -> None:
        """Count the requests waiting in the lane into the buffer, a chunk
        at a time under the state lock (not held when called). Those that
        come meanwhile wait for the next time."""
        for _ in range(-(-len(self._lane) // DRAIN_CHUNK)):
            with self._state_lock:
                self._drain_chunk()

    def _drain_chunk(self) -> None:
        """Count the first :data:`DRAIN_CHUNK` requests of the lane into the
        buffer (under the state lock).

        They were logged before the close began: the buffer's bounds apply
        to them, the close does not. Once the close is over, a request that
        saw the lane open just before is counted as dropped."""
        lane = self._lane
        if not lane:
            return
        entries = lane[:DRAIN_CHUNK]
        taken = len(entries)
        # Only the front goes: requests append at the back meanwhile.
        del lane[:taken]
        if self._finished:
            self._dropped += taken
            return
        # Most repeat the one before, in its minute: counted without a lookup.
        last: tuple[str, str, str, int | str, str | None] | None = None
        count: list[float] | None = None
        edge = 0.0  # the end of that minute
        for entry in entries:
            now = entry[5]
            if count is not None and count[0] <= now < edge and entry[:5] == last:
                count[1] += 1
                if now > count[2]:
                    count[2] = now
                continue
            key_id, method, path, status, remote_addr, now = entry
            minute = int(now) // 60
            code = status if type(status) is int else status_code(status)
            count = self._admit((key_id, minute, method, path, code, remote_addr), True, now)
            last, edge = entry[:5], (minute + 1) * 60

    def _take(self) -> list[Batch]:
        """The buffer's rows, as batches of records of ``batch_size`` at most.

        Their requests, rows and bytes stay counted against the bounds
        until written.
        """
        self._drain()
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
            self._dropped += dropped
