"""A flood of new wrong secrets for a real key id, under a real server.

gunicorn with 2 sync workers serves the guarded hello app (immediate mode,
bcrypt at cost 12, SQLite). Four processes flood it, each on its own
connection at a time, with wrong secrets for another real key id, every one
new. Measured side by side, round by round, with no flood, with that flood,
with a flood of unknown ids (the cost a wrong secret is to match), and with
a flood of requests to a public path, which need no key at all (the share
of the server any flood leaves the client, whatever the middleware does):

- a legitimate client with a verified key, sending one request after
  another (closed loop): its requests/s. Its requests and the flood's queue
  for the same two workers, so under any flood it gets its share of them,
  not the whole: that share is the same for wrong secrets as for unknown
  ids when neither costs a bcrypt;
- the same client paced at a fixed rate (open loop, 100 requests/s): the
  rate it achieved and its p50, which a flood should not move;
- the first request of a key the server has never seen (one bcrypt).
"""

from __future__ import annotations

import contextlib
import http.client
import multiprocessing
import os
import statistics
import subprocess
import sys
import time
import typing as t
from collections.abc import Iterator
from pathlib import Path

from apikey_middleware import SQLAlchemyKeyStore
from apikey_middleware.keys import generate_key
from tests.servers import free_port, wait_for_port

from ._table import Table, paired

if t.TYPE_CHECKING:
    from multiprocessing.synchronize import Event

SECTION = "abuse: flood under gunicorn, 2 sync workers, bcrypt 12"
ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
FLOODERS = 4
PACE = 100  # requests/s of the open-loop client


def _get(port: int, key: str | None, path: str = "/hello") -> int:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    headers = {} if key is None else {"Authorization": f"Bearer {key}"}
    try:
        connection.request("GET", path, headers=headers)
        response = connection.getresponse()
        response.read()
        return response.status
    finally:
        connection.close()


def _flooder(port: int, key_id: str | None, kind: str, stop: Event) -> None:
    while not stop.is_set():
        if kind == "public":
            _get(port, None, "/health")
        else:
            # A new wrong secret for the real id each time, or an unknown id.
            _get(port, generate_key("test", key_id).key)


@contextlib.contextmanager
def _flood(port: int, key_id: str | None, kind: str) -> Iterator[None]:
    if kind == "none":
        yield
        return
    stop = multiprocessing.Event()
    processes = [
        multiprocessing.Process(target=_flooder, args=(port, key_id, kind, stop), daemon=True)
        for _ in range(FLOODERS)
    ]
    for process in processes:
        process.start()
    time.sleep(0.5)  # the flood is under way
    try:
        yield
    finally:
        stop.set()
        for process in processes:
            process.join(timeout=30)


def _closed_loop(port: int, key: str, seconds: float) -> float:
    done = 0
    started = time.perf_counter()
    while time.perf_counter() - started < seconds:
        assert _get(port, key) == 200
        done += 1
    return done / (time.perf_counter() - started)


def _open_loop(port: int, key: str, seconds: float) -> tuple[float, float]:
    """Requests/s achieved at a pace of :data:`PACE`, and the p50 in ms."""
    latencies = []
    started = time.perf_counter()
    due = started
    while time.perf_counter() - started < seconds:
        due += 1 / PACE
        sent = time.perf_counter()
        assert _get(port, key) == 200
        latencies.append(time.perf_counter() - sent)
        time.sleep(max(0.0, due - time.perf_counter()))
    return len(latencies) / (time.perf_counter() - started), statistics.median(latencies) * 1e3


def _first_request_ms(port: int, key: str) -> float:
    started = time.perf_counter()
    assert _get(port, key) == 200
    return (time.perf_counter() - started) * 1e3


@contextlib.contextmanager
def _gunicorn(url: str) -> Iterator[int]:
    port = free_port()
    process = subprocess.Popen(  # noqa: S603
        [
            str(BIN / "gunicorn"),
            "--bind",
            f"127.0.0.1:{port}",
            "--workers",
            "2",
            "--log-level",
            "warning",
            'benchmarks.apps:create_app("wrapped")',
        ],
        cwd=ROOT,
        env={**os.environ, "BENCH_DATABASE_URL": url},
    )
    try:
        wait_for_port(port)
        yield port
    finally:
        process.terminate()
        process.wait(timeout=15)


def run(table: Table, url: str, *, rounds: int, seconds: float) -> None:
    store = SQLAlchemyKeyStore(url, bcrypt_rounds=12)
    store.create_schema()
    legit = store.create_key("legit")
    target = store.create_key("target")
    fresh = {kind: [store.create_key(f"fresh {kind} {n}").key for n in range(rounds)]
             for kind in ("none", "wrong", "unknown", "public")}  # fmt: skip
    store.close()
    kinds = {
        "none": "no flood",
        "wrong": "wrong-secret flood",
        "unknown": "unknown-id flood",
        "public": "public-path flood (no key)",
    }
    closed: dict[str, list[float]] = {kind: [] for kind in kinds}
    paced: dict[str, list[float]] = {kind: [] for kind in kinds}
    paced_p50: dict[str, list[float]] = {kind: [] for kind in kinds}
    first: dict[str, list[float]] = {kind: [] for kind in kinds}
    with _gunicorn(url) as port:
        for _ in range(20):  # verified in both workers
            _get(port, legit.key)
        for number in range(rounds):
            print(f"  server flood round {number + 1}/{rounds}", end="\r", flush=True)
            for kind in kinds:
                with _flood(port, target.id if kind == "wrong" else None, kind):
                    closed[kind].append(_closed_loop(port, legit.key, seconds))
                    rate, p50 = _open_loop(port, legit.key, seconds)
                    paced[kind].append(rate)
                    paced_p50[kind].append(p50)
                    first[kind].append(_first_request_ms(port, fresh[kind][number]))
    print()
    for kind, label in kinds.items():
        table.figure(SECTION, f"legit req/s, closed loop, {label}", closed[kind], "req/s")
    for kind, label in kinds.items():
        table.figure(SECTION, f"legit p50 at {PACE} req/s, {label}", paced_p50[kind], "ms")
    for kind, label in kinds.items():
        table.figure(SECTION, f"first request of a new key, {label}", first[kind], "ms")
    table.ratio(
        SECTION,
        "legit req/s, wrong-secret flood / no flood (closed loop)",
        paired(closed["wrong"], closed["none"]),
        ">= 0.90",
    )
    table.ratio(
        SECTION,
        "legit req/s, wrong-secret flood / unknown-id flood (closed loop)",
        paired(closed["wrong"], closed["unknown"]),
        ">= 0.90",
    )
    table.ratio(
        SECTION,
        "legit req/s, public-path flood / no flood (closed loop): any flood's share",
        paired(closed["public"], closed["none"]),
    )
    table.ratio(
        SECTION,
        "legit req/s, wrong-secret flood / public-path flood (closed loop)",
        paired(closed["wrong"], closed["public"]),
        ">= 0.90",
    )
    table.ratio(
        SECTION,
        f"legit req/s at {PACE}/s, wrong-secret flood / no flood (open loop)",
        paired(paced["wrong"], paced["none"]),
        ">= 0.90",
    )
    table.ratio(
        SECTION,
        "first request of a new key, wrong-secret flood / no flood",
        paired(first["wrong"], first["none"]),
        "<= 2.0",
    )
