"""Rate limits: what counting every request of a key costs, in-process and
under gunicorn, with the counters in memory and in Redis.

- in-process (prebuilt environ, as :mod:`benchmarks.bench_middleware`): the
  Flask hello view behind the middleware in channel mode on SQLite (the
  cheapest path, so the limit's share is the largest) without a limit, with
  one counted in memory, in Redis, and three limits at once in Redis; and
  the Redis round trips each request took, counted on the connection;
- gunicorn (2 sync workers, the load of :mod:`benchmarks.load`), on SQLite
  and on PostgreSQL when given: requests/s of the same app in immediate and
  in channel mode, with a Redis-backed limit on every key (high enough never
  to refuse), without, with the same limit counted by Flask-Limiter in the
  same Redis (the obvious alternative) instead, and with one Redis ``PING``
  a request and no count (the least one round trip costs).
"""

from __future__ import annotations

import contextlib
import statistics
import typing as t
import uuid
from collections.abc import Iterator

import redis

from apikey_middleware import ApiKeyMiddleware, CounterStorage, SQLAlchemyKeyStore

from ._table import Table, paired
from .apps import hello_app
from .bench_middleware import Variant, environ_for
from .bench_server import serving
from .load import GENERATOR, LoadResult, load, wrk

SECTION = "rate limits"
#: Never reached in a benchmark: every request is counted, none refused.
LIMIT = "100000000/hour"
THREE = "100000000/second;100000000/minute;100000000/hour"


@contextlib.contextmanager
def _prefix(url: str) -> Iterator[str]:
    """A key prefix of the run's own in Redis, its keys deleted afterwards."""
    prefix = f"apikey-bench-{uuid.uuid4().hex[:12]}"
    try:
        yield prefix
    finally:
        client = redis.Redis.from_url(url)
        keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
        if keys:
            client.delete(*keys)
        client.close()


def _round_trips(storage: CounterStorage, variant: Variant) -> float:
    """Writes to Redis per request over one round of ``variant``."""
    shared = storage._shared  # what the storage sends is counted
    assert shared is not None
    connection_class = shared.client.connection_pool.connection_class
    original = connection_class.send_packed_command
    sent = 0

    def counted(self: t.Any, command: t.Any, check_health: bool = True) -> None:
        nonlocal sent
        sent += 1
        original(self, command, check_health)

    connection_class.send_packed_command = counted
    try:
        variant.run_round()
    finally:
        connection_class.send_packed_command = original
        variant.samples.pop()
    return sent / variant.requests


def in_process(
    table: Table, sqlite_url: str, redis_url: str, *, rounds: int, requests: int
) -> None:
    store = SQLAlchemyKeyStore(sqlite_url, revocation="channel")
    store.create_schema()
    plain = store.create_key("no limit of its own", scopes=["hello"])
    three = store.create_key("three limits", scopes=["hello"], rate_limit=THREE)
    bare = hello_app().wsgi_app
    with _prefix(redis_url) as prefix:
        in_redis = CounterStorage(redis_url, prefix=prefix)
        variants = {
            "none": Variant(
                "no rate limit",
                ApiKeyMiddleware(bare, store, log_usage=False),
                environ_for(key=plain.key),
                requests,
            ),
            "memory": Variant(
                "a limit, counted in memory",
                ApiKeyMiddleware(bare, store, log_usage=False, default_rate_limit=LIMIT),
                environ_for(key=plain.key),
                requests,
            ),
            "redis": Variant(
                "a limit, counted in Redis",
                ApiKeyMiddleware(
                    bare,
                    store,
                    log_usage=False,
                    default_rate_limit=LIMIT,
                    rate_limit_storage=in_redis,
                ),
                environ_for(key=plain.key),
                requests,
            ),
            "three": Variant(
                "three limits, counted in Redis",
                ApiKeyMiddleware(bare, store, log_usage=False, rate_limit_storage=in_redis),
                environ_for(key=three.key),
                requests,
            ),
        }
        for variant in variants.values():
            variant.check()
            variant.run_round()  # warm: connected, script loaded, key verified
            variant.samples.clear()
        trips = {name: _round_trips(in_redis, variants[name]) for name in ("redis", "three")}
        for number in range(rounds):
            print(f"  rate limits, in-process round {number + 1}/{rounds}", end="\r", flush=True)
            for variant in variants.values():
                variant.run_round()
        print()
        in_redis.close()
    for variant in variants.values():
        table.figure(
            SECTION, f"in-process, channel mode (SQLite): {variant.name}", variant.samples, "µs"
        )
    none = variants["none"].samples
    for name in ("memory", "redis", "three"):
        added = [a - b for a, b in zip(variants[name].samples, none, strict=True)]
        table.figure(SECTION, f"added per request: {variants[name].name}", added, "µs")
    table.ratio(
        SECTION, "in-process, a limit in Redis / none", paired(variants["redis"].samples, none)
    )
    table.ratio(SECTION, "Redis round trips per request, one limit", trips["redis"], "<= 1")
    table.ratio(SECTION, "Redis round trips per request, three limits", trips["three"], "<= 1")
    store.close()


def under_gunicorn(
    table: Table, servers: dict[str, str], redis_url: str, *, rounds: int, requests: int
) -> None:
    """Each database of ``servers`` (a label and a URL, its tables made)
    serves the four kinds, all measured round by round."""
    env_of: dict[str, dict[str, str]] = {}
    headers_of: dict[str, dict[str, str]] = {}
    for label, url in servers.items():
        store = SQLAlchemyKeyStore(url, bcrypt_rounds=12)
        store.create_schema()
        issued = store.create_key(f"gunicorn rate limits ({label})")
        store.close()
        env_of[label] = {"BENCH_DATABASE_URL": url, "BENCH_KEY_ID": issued.id}
        headers_of[label] = {"Authorization": f"Bearer {issued.key}"}
    kinds = (
        "wrapped",
        "wrapped+limit",
        "wrapped+flask-limiter",
        "wrapped+ping",
        "channel",
        "channel+limit",
        "channel+flask-limiter",
        "channel+ping",
    )
    with _prefix(redis_url) as prefix, contextlib.ExitStack() as stack:
        limit_env = {
            "BENCH_RATE_LIMIT": LIMIT,
            "BENCH_RATE_LIMIT_STORAGE": redis_url,
            "BENCH_RATE_LIMIT_PREFIX": prefix,
        }
        ports = {
            (label, kind): stack.enter_context(serving(kind, env_of[label] | limit_env))
            for label in servers
            for kind in kinds
        }
        for (label, kind), port in ports.items():
            warm = load(port, "/hello", headers_of[label], total=400)
            if set(warm.statuses) != {200}:
                raise SystemExit(f"rate limits, {label} {kind}: answered {warm.statuses}, not 200")
        results: dict[tuple[str, str], list[LoadResult]] = {served: [] for served in ports}
        for number in range(rounds):
            print(f"  rate limits, gunicorn round {number + 1}/{rounds}", end="\r", flush=True)
            for (label, kind), port in ports.items():
                headers = headers_of[label]
                if GENERATOR == "wrk":
                    seconds = max(1, round(requests / 2000))
                    results[label, kind].append(wrk(port, "/hello", headers, seconds=seconds))
                else:
                    results[label, kind].append(load(port, "/hello", headers, total=requests))
        print()
    rates = {served: [r.rate for r in runs] for served, runs in results.items()}
    for (label, kind), runs in results.items():
        shown = kind.replace("+limit", " + a limit in Redis")
        shown = shown.replace("+flask-limiter", " + Flask-Limiter")
        name = f"gunicorn ({label}), {shown.replace('+ping', ' + a Redis PING')}"
        table.figure(SECTION, f"{name}: req/s", rates[label, kind], "req/s")
        table.figure(SECTION, f"{name}: p99", [r.percentile(0.99) * 1e3 for r in runs], "ms")
    for label in servers:
        for mode in ("wrapped", "channel"):
            mode_name = "immediate" if mode == "wrapped" else "channel mode"
            table.ratio(
                SECTION,
                f"gunicorn req/s, a Redis limit on every key / none ({label}, {mode_name})",
                paired(rates[label, f"{mode}+limit"], rates[label, mode]),
                ">= 0.85",
            )
            table.ratio(
                SECTION,
                f"gunicorn req/s, the limit counted here / by Flask-Limiter ({label}, {mode_name})",
                paired(rates[label, f"{mode}+limit"], rates[label, f"{mode}+flask-limiter"]),
            )
            table.ratio(
                SECTION,
                f"gunicorn req/s, a Redis PING a request / none ({label}, {mode_name})",
                paired(rates[label, f"{mode}+ping"], rates[label, mode]),
            )
    medians = {
        f"{label} {kind}": round(statistics.median(values))
        for (label, kind), values in rates.items()
    }
    print(f"  rate limits under gunicorn: {medians}")
