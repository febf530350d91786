"""Abuse: legitimate clients during a flood of wrong secrets, and memory
after a million distinct bad keys.

Flood: in one process, one thread sends requests with a verified key and
its latency is measured, while four threads send wrong secrets for another
real key id, each a new one (so neither the failure memory nor a cache can
answer). Measured with no flood; with the target's row holding its check
value (every wrong secret is refused for one HMAC); and with a row made by
0.1.0, before check values, where every wrong secret costs a bcrypt at cost
12, with the store's default bound on bcrypt checks at once and with that
bound lifted.

Memory: a fresh process sends 1,000,000 requests, each with a different
well-formed key of an unknown id from a different client address, through
a channel-mode middleware with throttling on, and reports its peak RSS
before and after.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import threading
import time
from pathlib import Path

import sqlalchemy as sa

from apikey_middleware import ApiKeyMiddleware, FailureThrottle, SQLAlchemyKeyStore
from apikey_middleware.keys import _checksum, generate_key
from apikey_middleware.store import ApiKey

from ._table import Table, paired
from .apps import hello_app
from .bench_middleware import _call, environ_for

SECTION = "abuse"
FLOOD_THREADS = 4


def _legit_latencies(guarded: ApiKeyMiddleware, key: str, requests: int) -> list[float]:
    environ = environ_for(key=key)
    latencies = []
    for _ in range(requests):
        started = time.perf_counter()
        _call(guarded, environ)
        latencies.append(time.perf_counter() - started)
    return latencies


def _flood(
    guarded: ApiKeyMiddleware, key_id: str | None, stop: threading.Event, done: list[float]
) -> None:
    while not stop.is_set():
        _call(guarded, environ_for(key=generate_key("test", key_id).key))
        done.append(time.perf_counter())


def _p50(samples: list[float]) -> float:
    return sorted(samples)[len(samples) // 2]


def flood(table: Table, url: str, *, rounds: int, requests: int) -> None:
    bounded = SQLAlchemyKeyStore(url, bcrypt_rounds=12)
    bounded.create_schema()
    legit = bounded.create_key("legit")
    target = bounded.create_key("target")
    old = bounded.create_key("old target")
    with bounded.engine.begin() as connection:
        connection.execute(sa.update(ApiKey).where(ApiKey.id == old.id).values(key_check=None))
    unbounded = SQLAlchemyKeyStore(url, bcrypt_concurrency=64)
    scenarios = {
        "no flood": (bounded, None),
        "flood, row with check value": (bounded, target.id),
        "flood, 0.1.0 row, bcrypt checks bounded (default)": (bounded, old.id),
        "flood, 0.1.0 row, bcrypt checks unbounded": (unbounded, old.id),
    }
    apps = {
        name: ApiKeyMiddleware(hello_app().wsgi_app, store, log_usage=False)
        for name, (store, _) in scenarios.items()
    }
    p50s: dict[str, list[float]] = {name: [] for name in scenarios}
    rates: dict[str, list[float]] = {name: [] for name in scenarios}
    guesses: dict[str, list[float]] = {name: [] for name in scenarios}
    for guarded in apps.values():
        _legit_latencies(guarded, legit.key, 200)  # warm: verified once
    for number in range(rounds):
        print(f"  flood round {number + 1}/{rounds}", end="\r", flush=True)
        for name, (_, flooded) in scenarios.items():
            guarded = apps[name]
            stop = threading.Event()
            done: list[float] = []
            threads = [
                threading.Thread(target=_flood, args=(guarded, flooded, stop, done))
                for _ in range(FLOOD_THREADS if flooded else 0)
            ]
            for thread in threads:
                thread.start()
            time.sleep(0.3 if flooded else 0)
            started = time.perf_counter()
            latencies = _legit_latencies(guarded, legit.key, requests)
            elapsed = time.perf_counter() - started
            stop.set()
            for thread in threads:
                thread.join()
            p50s[name].append(_p50(latencies) * 1e6)
            rates[name].append(requests / elapsed)
            within = [moment for moment in done if started <= moment <= started + elapsed]
            guesses[name].append(len(within) / elapsed)
    print()
    for name in scenarios:
        table.figure(SECTION, f"legit p50, {name}", p50s[name], "µs")
    for name in scenarios:
        table.figure(SECTION, f"legit requests/s, {name}", rates[name], "req/s")
    for name, (_, flooded) in scenarios.items():
        if flooded:
            table.figure(SECTION, f"wrong secrets checked/s, {name}", guesses[name], "guesses/s")
    for name, label in (
        ("flood, row with check value", "check value"),
        ("flood, 0.1.0 row, bcrypt checks bounded (default)", "0.1.0 row, bounded"),
        ("flood, 0.1.0 row, bcrypt checks unbounded", "0.1.0 row, unbounded"),
    ):
        table.ratio(
            SECTION,
            f"legit p50, flood ({label}) / no flood",
            paired(p50s[name], p50s["no flood"]),
            "" if "unbounded" in label else "<= 1.10",
        )
        table.ratio(
            SECTION,
            f"legit requests/s, flood ({label}) / no flood",
            paired(rates[name], rates["no flood"]),
        )
    bounded.close()
    unbounded.close()


def _peak_mb() -> float:
    """Peak resident memory of this process, in MB.

    ``VmHWM`` where Linux offers it: ``ru_maxrss`` survives ``exec`` and so
    may be the parent's peak.
    """
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def memory_child(url: str, count: int) -> None:
    """In a fresh process: peak RSS before and after ``count`` bad keys."""
    store = SQLAlchemyKeyStore(url, revocation="channel")
    store.create_schema()
    throttle = FailureThrottle(1_000_000, 3600)
    guarded = ApiKeyMiddleware(hello_app().wsgi_app, store, throttle=throttle)
    base = environ_for(key=generate_key("test").key)
    secret = generate_key("test").key[23:51]

    def send(number: int) -> None:
        # A new id each time, with a valid checksum (drawing fresh random
        # keys would take most of the run).
        body = f"sk_test_{number:014d}_{secret}"
        environ = dict(base)
        environ["HTTP_AUTHORIZATION"] = f"Bearer {body}{_checksum(body)}"
        environ["REMOTE_ADDR"] = f"10.{number >> 16 & 255}.{number >> 8 & 255}.{number & 255}"
        _call(guarded, environ)

    for number in range(100):  # every code path run once
        send(number)
    before = _peak_mb()
    marks = {}
    started = time.perf_counter()
    for number in range(count):
        send(100 + number)
        if number + 1 in (count // 100, count // 10, count):
            marks[number + 1] = _peak_mb()
    print(
        json.dumps(
            {
                "before": before,
                "marks": marks,
                "seconds": time.perf_counter() - started,
                "rows": len(store._rows),
                "addresses": len(throttle),
            }
        )
    )
    store.close()


def memory(table: Table, url: str, count: int) -> None:
    print(f"  memory: {count:,} distinct bad keys in a fresh process...", flush=True)
    result = subprocess.run(  # noqa: S603
        [sys.executable, "-m", "benchmarks.bench_abuse", url, str(count)],
        cwd=Path(__file__).resolve().parent.parent,
        capture_output=True,
        text=True,
        check=True,
    )
    figures = json.loads(result.stdout.strip().splitlines()[-1])
    before = figures["before"]
    marks = {int(n): mb for n, mb in figures["marks"].items()}
    last = max(marks)
    table.figure(SECTION, "peak RSS before the bad keys", [before], "MB")
    for done in sorted(marks):
        table.figure(SECTION, f"peak RSS after {done:,} bad keys", [marks[done]], "MB")
    table.figure(SECTION, "bad keys per second, memory run", [last / figures["seconds"]], "keys/s")
    table.ratio(
        SECTION,
        f"peak RSS growth over {last:,} bad keys, MB",
        marks[last] - before,
        "<= 8",
        suffix=f"   (rows kept: {figures['rows']:,}, addresses kept: {figures['addresses']:,})",
    )


if __name__ == "__main__":
    memory_child(sys.argv[1], int(sys.argv[2]))
