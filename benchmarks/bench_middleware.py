"""In-process: what the middleware costs a request, side by side in one run.

Each variant is called as a WSGI app with a prebuilt environ, so only the
application's own work is timed (no sockets, no server). Rounds of the
variants are interleaved, so a busy moment on the machine hits them all.

- bare: a Flask hello view; floor: the same plus one hand-written SQLAlchemy
  Core ``SELECT`` of the key's row (the least immediate revocation costs);
- wrapped: behind ``ApiKeyMiddleware`` with a valid key, usage log off, then
  on (the request only buffers a row; the writer's time per row is measured
  apart); through the Flask decorator; in channel mode; and with bcrypt (cost
  12) on every request, the design this package avoids;
- a legacy plain-WSGI app, bare and wrapped;
- the error paths: no key, a malformed key, a bad checksum, an unknown id,
  a repeated wrong secret, a missing scope.
"""

from __future__ import annotations

import statistics
import time
import typing as t
from collections.abc import Callable
from dataclasses import dataclass, field

from werkzeug.test import EnvironBuilder, run_wsgi_app

from apikey_middleware import ApiKeyMiddleware, SQLAlchemyKeyStore
from apikey_middleware.keys import generate_key
from apikey_middleware.usage import UsageWriter

from ._table import Table, paired
from .apps import decorated_app, floor_app, hello_app, legacy_app

if t.TYPE_CHECKING:
    from _typeshed.wsgi import WSGIApplication, WSGIEnvironment

SECTION = "in-process, per request"


def _start_response(status: str, headers: list[tuple[str, str]], exc_info: t.Any = None) -> t.Any:
    return None


def _call(app: WSGIApplication, environ: WSGIEnvironment) -> None:
    body = app(dict(environ), _start_response)
    for _ in body:
        pass
    close = getattr(body, "close", None)
    if close is not None:
        close()


def environ_for(path: str = "/hello", key: str | None = None) -> WSGIEnvironment:
    headers = [] if key is None else [("Authorization", f"Bearer {key}")]
    return EnvironBuilder(path=path, headers=headers).get_environ()


@dataclass
class Variant:
    name: str
    app: WSGIApplication
    environ: WSGIEnvironment
    requests: int
    expect: str = "200 OK"
    samples: list[float] = field(default_factory=list)
    #: Run after each round's requests, timed apart (writing their usage rows).
    finish: Callable[[], None] | None = None
    finish_samples: list[float] = field(default_factory=list)

    def check(self) -> None:
        _, status, _ = run_wsgi_app(self.app, dict(self.environ), buffered=True)
        if status != self.expect:
            raise SystemExit(f"{self.name}: expected {self.expect}, got {status}")

    def run_round(self) -> None:
        app, environ = self.app, self.environ
        started = time.perf_counter()
        for _ in range(self.requests):
            _call(app, environ)
        self.samples.append((time.perf_counter() - started) / self.requests * 1e6)
        if self.finish is not None:
            started = time.perf_counter()
            self.finish()
            self.finish_samples.append((time.perf_counter() - started) / self.requests * 1e6)

    def run_chunk(self, requests: int) -> float:
        """Seconds ``requests`` requests take, recorded nowhere."""
        app, environ = self.app, self.environ
        started = time.perf_counter()
        for _ in range(requests):
            _call(app, environ)
        return time.perf_counter() - started

    @property
    def median(self) -> float:
        return statistics.median(self.samples)


@dataclass
class Setup:
    label: str
    variants: dict[str, Variant]
    stores: list[SQLAlchemyKeyStore]


def database_variants(label: str, url: str, requests: int, bcrypt_requests: int) -> Setup:
    store = SQLAlchemyKeyStore(url, bcrypt_rounds=12)
    store.metadata.drop_all(store.engine)
    store.create_schema()
    issued = store.create_key("bench", scopes=["hello"])
    uncached = SQLAlchemyKeyStore(store.engine, cache_size=0)
    channel = SQLAlchemyKeyStore(url, revocation="channel")
    valid = environ_for(key=issued.key)
    bare = hello_app()
    # The writer's thread is kept out of the timed requests (it would write
    # only after a second or 1000 rows anyway); each round's rows are
    # written right after it and that time is reported on its own.
    writer = UsageWriter(store, batch_size=requests + 1, max_pending=requests + 1, interval=3600)
    logging_on = ApiKeyMiddleware(bare.wsgi_app, store, usage_writer=writer)
    variants = {
        "bare": Variant("bare Flask", bare.wsgi_app, valid, requests),
        "floor": Variant(
            "floor: bare + 1 SELECT", floor_app(store.engine, issued.id).wsgi_app, valid, requests
        ),
        "wrapped": Variant(
            "wrapped, valid key",
            ApiKeyMiddleware(bare.wsgi_app, store, log_usage=False),
            valid,
            requests,
        ),
        "logged": Variant(
            "wrapped + usage log", logging_on, valid, requests, finish=logging_on.flush
        ),
        "decorated": Variant(
            "Flask decorator, valid key",
            decorated_app(store, APIKEY_LOG_USAGE=False).wsgi_app,
            valid,
            requests,
        ),
        "channel": Variant(
            "wrapped, channel mode",
            ApiKeyMiddleware(bare.wsgi_app, channel, log_usage=False),
            valid,
            requests,
        ),
        "bcrypt": Variant(
            "bcrypt every request",
            ApiKeyMiddleware(bare.wsgi_app, uncached, log_usage=False),
            valid,
            bcrypt_requests,
        ),
    }
    for variant in variants.values():
        variant.name = f"{variant.name} ({label})"
    return Setup(label, variants, [store, channel])


def shared_variants(url: str, requests: int) -> dict[str, Variant]:
    """Variants where the database does not matter: SQLite only."""
    store = SQLAlchemyKeyStore(url, bcrypt_rounds=12)
    store.create_schema()
    issued = store.create_key("errors", scopes=["hello"])
    guarded = ApiKeyMiddleware(
        hello_app().wsgi_app, store, rules=[("GET", "/admin", "admin")], log_usage=False
    )
    valid = issued.key
    checksum_off = valid[:-1] + ("A" if valid[-1] != "A" else "B")
    wrong = generate_key("test", issued.id).key
    unauthorized, invalid = "401 UNAUTHORIZED", "401 UNAUTHORIZED"
    return {
        "legacy bare": Variant("legacy WSGI app, bare", legacy_app, environ_for(), requests),
        "legacy wrapped": Variant(
            "legacy WSGI app, wrapped",
            ApiKeyMiddleware(legacy_app, store, log_usage=False),
            environ_for(key=valid),
            requests,
        ),
        # Another scheme, with a credential as long as a key: the same bytes
        # to carry, and no key.
        "no key": Variant(
            "error: no key",
            guarded,
            EnvironBuilder(
                path="/hello", headers=[("Authorization", f"Basic {'x' * len(valid)}")]
            ).get_environ(),
            requests,
            unauthorized,
        ),
        # No key, and 150 method overrides, each a different value: refused
        # before any rule is looked up.
        "overrides": Variant(
            "error: 150 method overrides",
            guarded,
            EnvironBuilder(
                path="/hello", query_string="&".join(f"_method=Q{n}" for n in range(150))
            ).get_environ(),
            requests,
            "400 BAD REQUEST",
        ),
        "malformed": Variant(
            "error: malformed key", guarded, environ_for(key="sk_live_nope"), requests, invalid
        ),
        "checksum": Variant(
            "error: bad checksum", guarded, environ_for(key=checksum_off), requests, invalid
        ),
        "unknown": Variant(
            "error: unknown key id",
            guarded,
            environ_for(key=generate_key("test").key),
            requests,
            invalid,
        ),
        "wrong": Variant(
            "error: wrong secret, repeated", guarded, environ_for(key=wrong), requests, invalid
        ),
        "forbidden": Variant(
            "error: missing scope",
            guarded,
            environ_for("/admin", valid),
            requests,
            "403 FORBIDDEN",
        ),
    }


def run(
    table: Table, sqlite_url: str, postgres_url: str | None, *, rounds: int, requests: int
) -> None:
    setups = [database_variants("SQLite", sqlite_url, requests, 1)]
    if postgres_url:
        setups.append(database_variants("PostgreSQL", postgres_url, requests, 1))
    shared = shared_variants(sqlite_url.replace("bench.db", "errors.db"), requests)
    everything = [v for setup in setups for v in setup.variants.values()] + list(shared.values())
    for variant in everything:
        variant.check()
        variant.run_round()  # warm up: pools filled, statements compiled, key verified
        variant.samples.clear()
        variant.finish_samples.clear()
    for number in range(rounds):
        print(f"  in-process round {number + 1}/{rounds}", end="\r", flush=True)
        for variant in everything:
            variant.run_round()
    print()
    for variant in everything:
        table.figure(SECTION, variant.name, variant.samples, "µs")
    for setup in setups:
        v, label = setup.variants, setup.label

        def ratio(a: str, b: str) -> list[float]:
            return paired(v[a].samples, v[b].samples)  # noqa: B023

        table.ratio(SECTION, f"wrapped / floor ({label})", ratio("wrapped", "floor"), "<= 1.10")
        table.ratio(SECTION, f"decorator / floor ({label})", ratio("decorated", "floor"))
        table.ratio(SECTION, f"wrapped / bare ({label})", ratio("wrapped", "bare"))
        table.ratio(SECTION, f"floor / bare ({label})", ratio("floor", "bare"))
        table.ratio(SECTION, f"channel mode / bare ({label})", ratio("channel", "bare"), "<= 1.15")
        table.ratio(SECTION, f"bcrypt / wrapped ({label})", ratio("bcrypt", "wrapped"), ">= 200x")
        logged = v["logged"]
        table.ratio(
            SECTION,
            f"usage log on / off, request path ({label})",
            ratio("logged", "wrapped"),
            "<= 1.05",
        )
        write = statistics.median(logged.finish_samples)
        with_writer = [a + b for a, b in zip(logged.samples, logged.finish_samples, strict=True)]
        table.ratio(
            SECTION,
            f"usage log on / off, with writer ({label})",
            paired(with_writer, v["wrapped"].samples),
            suffix=f"   (writer: {write:.1f} µs per row, off the request path)",
        )
        for store in setup.stores:
            store.close()

    def error_ratio(name: str) -> list[float]:
        return paired(shared[name].samples, shared["no key"].samples)

    table.ratio(SECTION, "malformed key / no key", error_ratio("malformed"), "<= 1.05")
    table.ratio(SECTION, "bad checksum / no key", error_ratio("checksum"), "<= 1.05")
    table.ratio(SECTION, "unknown id / no key", error_ratio("unknown"))
    table.ratio(SECTION, "repeated wrong secret / no key", error_ratio("wrong"))
    table.ratio(SECTION, "missing scope / no key", error_ratio("forbidden"))
    table.ratio(SECTION, "150 method overrides / no key", error_ratio("overrides"), "<= 2")


def writer_throughput(table: Table, label: str, url: str, rows: int = 20_000) -> None:
    """Rows per second through the usage writer: buffered, then flushed in batches."""
    store = SQLAlchemyKeyStore(url, bcrypt_rounds=4)
    store.create_schema()
    key_id = store.create_key("writer").id
    writer = UsageWriter(store, max_pending=rows, batch_size=1000, interval=3600)
    writer._start = lambda: None  # type: ignore[method-assign]  # flushed here, not by a thread
    rates = []
    for _ in range(3):
        for _ in range(rows):
            writer.record(key_id, "GET", "/hello", 200, "127.0.0.1")
        started = time.perf_counter()
        writer.flush()
        rates.append(rows / (time.perf_counter() - started))
    table.figure("usage log writer", f"rows written per second ({label})", rates, "rows/s")
    writer.close()
    store.metadata.drop_all(store.engine)
    store.close()
