"""Under a real server: gunicorn, 2 sync workers, loaded over 127.0.0.1.

The bare, floor, wrapped (immediate) and channel-mode apps (usage log off,
as in-process; channel mode once more with it on) of
:mod:`benchmarks.apps` each run in their own gunicorn at once; rounds go to
each in turn, so they share the machine's moments alike. The load comes
from :mod:`benchmarks.load`: ``wrk`` for a fixed time where it is
installed, else a Python generator with a fixed number of requests. Either
runs on the same two cores as the server: the figures are for comparison
with each other, not absolute capacity.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

from apikey_middleware.keys import generate_key
from tests.servers import free_port, wait_for_port

from ._table import Table, paired
from .load import GENERATOR, LoadResult, load, wrk

SECTION = f"gunicorn, 2 workers, load from {GENERATOR}"
ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


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
        wait_for_port(port)
        yield port
    finally:
        process.terminate()
        process.wait(timeout=15)


def run(
    table: Table, databases: dict[str, tuple[str, str, str]], *, rounds: int, requests: int
) -> None:
    """``databases``: label -> (URL, a valid key, its id)."""
    servers: dict[str, tuple[str, dict[str, str]]] = {"bare": ("bare", {})}
    # name -> (server, path, headers, expected status)
    loads: dict[str, tuple[str, str, dict[str, str], int]] = {}
    for label, (url, key, key_id) in databases.items():
        env = {"BENCH_DATABASE_URL": url, "BENCH_KEY_ID": key_id}
        valid = {"Authorization": f"Bearer {key}"}
        if not loads:
            loads["bare Flask"] = ("bare", "/hello", valid, 200)
        for kind in ("floor", "wrapped", "channel", "channel+log"):
            servers[f"{kind} {label}"] = (kind, env)
        loads[f"floor: bare + 1 SELECT ({label})"] = (f"floor {label}", "/hello", valid, 200)
        loads[f"wrapped, immediate ({label})"] = (f"wrapped {label}", "/hello", valid, 200)
        loads[f"wrapped, channel mode ({label})"] = (f"channel {label}", "/hello", valid, 200)
        loads[f"channel mode + usage log ({label})"] = (
            f"channel+log {label}",
            "/hello",
            valid,
            200,
        )
    _, first_key, _ = next(iter(databases.values()))
    first = next(iter(databases))
    wrong_checksum = first_key[:-1] + ("A" if first_key[-1] != "A" else "B")
    for name, path, token, status in (
        ("no key", "/hello", None, 401),  # a Basic credential as long as a key
        ("malformed key", "/hello", "sk_live_nope", 401),
        ("bad checksum", "/hello", wrong_checksum, 401),
        ("unknown key id", "/hello", generate_key("test").key, 401),
        ("missing scope", "/admin", first_key, 403),
    ):
        if token is None:
            headers = {"Authorization": f"Basic {'x' * len(first_key)}"}
        else:
            headers = {"Authorization": f"Bearer {token}"}
        loads[f"error: {name} ({first})"] = (f"wrapped {first}", path, headers, status)

    results: dict[str, list[LoadResult]] = {name: [] for name in loads}
    with contextlib.ExitStack() as stack:
        ports = {
            server: stack.enter_context(serving(kind, env))
            for server, (kind, env) in servers.items()
        }
        for name, (server, path, headers, status) in loads.items():
            warm = load(ports[server], path, headers, total=400)
            if set(warm.statuses) != {status}:
                raise SystemExit(f"{name}: answered {warm.statuses}, not {status}")
        for number in range(rounds):
            print(f"  gunicorn round {number + 1}/{rounds}", end="\r", flush=True)
            for name, (server, path, headers, _) in loads.items():
                if GENERATOR == "wrk":
                    # As long as the Python generator would take at ~2000 req/s.
                    seconds = max(1, round(requests / 2000))
                    results[name].append(wrk(ports[server], path, headers, seconds=seconds))
                else:
                    results[name].append(load(ports[server], path, headers, total=requests))
    print()
    for name, runs in results.items():
        table.figure(SECTION, f"{name}: req/s", [r.rate for r in runs], "req/s")
        table.figure(SECTION, f"{name}: p50", [r.p50 * 1e3 for r in runs], "ms")
        table.figure(SECTION, f"{name}: p99", [r.percentile(0.99) * 1e3 for r in runs], "ms")
    rates = {name: [r.rate for r in runs] for name, runs in results.items()}

    def ratio(a: str, b: str) -> list[float]:
        return paired(rates[a], rates[b])

    for label in databases:
        floor = f"floor: bare + 1 SELECT ({label})"
        table.ratio(SECTION, f"floor / bare, req/s ({label})", ratio(floor, "bare Flask"))
        table.ratio(
            SECTION,
            f"immediate / floor, req/s ({label})",
            ratio(f"wrapped, immediate ({label})", floor),
            ">= 0.90",
        )
        table.ratio(
            SECTION,
            f"channel mode / bare, req/s ({label})",
            ratio(f"wrapped, channel mode ({label})", "bare Flask"),
            ">= 0.85",
        )
        table.ratio(
            SECTION,
            f"usage log on / off, channel mode, req/s ({label})",
            ratio(f"channel mode + usage log ({label})", f"wrapped, channel mode ({label})"),
        )
    for name, target in (
        ("malformed key", "<= 1.05"),
        ("bad checksum", "<= 1.05"),
        ("unknown key id", ""),
        ("missing scope", ""),
    ):
        table.ratio(
            SECTION,
            f"time per request, {name} / no key",
            ratio(f"error: no key ({first})", f"error: {name} ({first})"),
            target,
        )
