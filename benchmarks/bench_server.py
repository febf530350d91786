"""Under a real server: gunicorn, 2 sync workers, loaded over 127.0.0.1.

The bare, floor, wrapped (immediate) and channel-mode apps of
:mod:`benchmarks.apps` each run in their own gunicorn at once; rounds of a
fixed number of requests go to each in turn, so they share the machine's
moments alike. The load comes from :mod:`benchmarks.load` (one Python
process, so it takes a core of its own: the figures are for comparison with
each other, not absolute capacity).
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from ._table import Table
from .load import LoadResult, load

SECTION = "gunicorn, 2 workers"
ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(port: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        time.sleep(0.05)
    raise SystemExit(f"gunicorn did not start on port {port}")


@contextlib.contextmanager
def serving(kind: str, env: dict[str, str]) -> Iterator[int]:
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
            f'benchmarks.apps:create_app("{kind}")',
        ],
        cwd=ROOT,
        env={**os.environ, **env},
    )
    try:
        wait_for(port)
        yield port
    finally:
        process.terminate()
        process.wait(timeout=15)


def run(
    table: Table, databases: dict[str, tuple[str, str, str]], *, rounds: int, requests: int
) -> None:
    """``databases``: label -> (URL, a valid key, its id)."""
    first_key = next(iter(databases.values()))[1]
    servers: list[tuple[str, str, dict[str, str], str]] = [("bare Flask", "bare", {}, first_key)]
    for label, (url, key, key_id) in databases.items():
        env = {"BENCH_DATABASE_URL": url, "BENCH_KEY_ID": key_id}
        servers += [
            (f"floor: bare + 1 SELECT ({label})", "floor", env, key),
            (f"wrapped, immediate ({label})", "wrapped", env, key),
            (f"wrapped, channel mode ({label})", "channel", env, key),
        ]
    results: dict[str, list[LoadResult]] = {name: [] for name, _, _, _ in servers}
    headers = {name: {"Authorization": f"Bearer {key}"} for name, _, _, key in servers}
    with contextlib.ExitStack() as stack:
        ports = {name: stack.enter_context(serving(kind, env)) for name, kind, env, _ in servers}
        for name, port in ports.items():
            warm = load(port, "/hello", headers[name], total=400)
            if set(warm.statuses) != {200}:
                raise SystemExit(f"{name}: answered {warm.statuses}")
        for number in range(rounds):
            print(f"  gunicorn round {number + 1}/{rounds}", end="\r", flush=True)
            for name, port in ports.items():
                results[name].append(load(port, "/hello", headers[name], total=requests))
    print()
    for name, runs in results.items():
        table.figure(SECTION, f"{name}: req/s", [r.rate for r in runs], "req/s")
        table.figure(SECTION, f"{name}: p50", [r.p50 * 1e3 for r in runs], "ms")
        table.figure(SECTION, f"{name}: p99", [r.percentile(0.99) * 1e3 for r in runs], "ms")
    rate = {name: sorted(r.rate for r in runs)[len(runs) // 2] for name, runs in results.items()}
    bare = rate["bare Flask"]
    for label in databases:
        floor = rate[f"floor: bare + 1 SELECT ({label})"]
        table.ratio(SECTION, f"floor / bare, req/s ({label})", floor / bare)
        table.ratio(
            SECTION,
            f"immediate / floor, req/s ({label})",
            rate[f"wrapped, immediate ({label})"] / floor,
            ">= 0.90",
        )
        table.ratio(
            SECTION,
            f"channel mode / bare, req/s ({label})",
            rate[f"wrapped, channel mode ({label})"] / bare,
            ">= 0.85",
        )
