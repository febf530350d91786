"""Channel mode: how long another process still accepts a key after revoke().

A child process authenticates one key in a tight loop through a
channel-mode store, noting when each accepted attempt started. The parent
revokes the key with its own store and notes when ``revoke()`` returned.
Both clocks are the system's monotonic clock. For each trial the figure is
how long after that return the child still started an attempt it
accepted (zero if none), and how many such attempts there were.

On PostgreSQL the same is measured for a revocation by plain SQL (an
``UPDATE`` on its own connection, not through the store), which only the
keys table's trigger announces.
"""

from __future__ import annotations

import multiprocessing
import statistics
import time
from multiprocessing.connection import Connection

import sqlalchemy as sa

from apikey_middleware import InvalidKeyError, SQLAlchemyKeyStore
from apikey_middleware.keys import parse_key

from ._table import Table

SECTION = "channel mode: acceptance after revoke() returned"


def _child(url: str, poll_interval: float, pipe: Connection) -> None:
    store = SQLAlchemyKeyStore(url, revocation="channel", poll_interval=poll_interval)
    channel = store.channel
    assert channel is not None
    while channel.token() is None:
        time.sleep(0.01)
    pipe.send("listening")
    while True:
        key = pipe.recv()
        if key is None:
            break
        parsed = parse_key(key)
        assert parsed is not None
        for _ in range(3):
            store.authenticate(parsed)  # verified, remembered, row cached
        pipe.send("warm")
        accepted: list[float] = []
        while True:
            started = time.monotonic()
            try:
                store.authenticate(parsed)
            except InvalidKeyError:
                break
            accepted.append(started)
        pipe.send(accepted)
    store.close()


_BY_HAND = sa.text("UPDATE apikey_keys SET revoked_at = created_at WHERE id = :id")


def trials(
    url: str, *, count: int, poll_interval: float = 1.0, by_hand: bool = False
) -> tuple[list[float], list[int]]:
    """Per trial: seconds of acceptance after the revocation returned, and
    attempts accepted then; ``by_hand``: revoked by plain SQL."""
    admin = SQLAlchemyKeyStore(url, bcrypt_rounds=4)
    admin.create_schema()
    context = multiprocessing.get_context("spawn")
    parent, child_end = context.Pipe()
    child = context.Process(target=_child, args=(url, poll_interval, child_end))
    child.start()
    assert parent.recv() == "listening"
    delays: list[float] = []
    late: list[int] = []
    for number in range(count):
        issued = admin.create_key(f"revocation trial {number}")
        time.sleep(0.05)  # the creation's own notice has come and gone
        parent.send(issued.key)
        assert parent.recv() == "warm"
        time.sleep(0.02)
        if by_hand:
            with admin.engine.begin() as connection:
                connection.execute(_BY_HAND, {"id": issued.id})
        else:
            admin.revoke(issued.id)
        returned = time.monotonic()
        accepted: list[float] = parent.recv()
        after = [moment for moment in accepted if moment > returned]
        delays.append(max(0.0, max(after, default=returned) - returned))
        late.append(len(after))
    parent.send(None)
    child.join(timeout=30)
    admin.close()
    return delays, late


def _p99(values: list[float]) -> float:
    return sorted(values)[min(len(values) - 1, int(0.99 * len(values)))]


def run(table: Table, databases: dict[str, str], *, count: int) -> None:
    for label, url in databases.items():
        print(f"  revocation latency ({label}), {count} trials...", flush=True)
        poll = 1.0
        delays, late = trials(url, count=count, poll_interval=poll)
        ms = [delay * 1e3 for delay in delays]
        table.figure(SECTION, f"accepted for, after revoke() ({label})", ms, "ms")
        table.figure(
            SECTION,
            f"requests accepted after revoke() ({label})",
            [float(n) for n in late],
            "requests",
        )
        if label == "SQLite":
            table.ratio(
                SECTION,
                f"most requests accepted after revoke() ({label})",
                float(max(late)),
                "<= 0",
            )
        elif label == "PostgreSQL":
            table.ratio(SECTION, f"p50 ms accepted after revoke() ({label})", statistics.median(ms))
            table.ratio(SECTION, f"p99 ms accepted after revoke() ({label})", _p99(ms), "<= 50")
            print(f"  revocation latency ({label}, plain SQL), {count} trials...", flush=True)
            by_hand, _ = trials(url, count=count, poll_interval=poll, by_hand=True)
            hand_ms = [delay * 1e3 for delay in by_hand]
            table.figure(
                SECTION, f"accepted for, after a plain SQL UPDATE ({label})", hand_ms, "ms"
            )
            table.ratio(
                SECTION,
                f"p50 ms accepted after a plain SQL UPDATE ({label}, trigger)",
                statistics.median(hand_ms),
            )
            table.ratio(
                SECTION,
                f"p99 ms accepted after a plain SQL UPDATE ({label}, trigger)",
                _p99(hand_ms),
                "<= 50",
            )
        else:
            table.ratio(
                SECTION,
                f"max ms accepted after revoke() ({label}, polling)",
                max(ms),
                f"<= {poll * 1e3:.0f}",
            )
