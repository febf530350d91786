"""What the middleware costs a request, measured side by side in one run.

Each variant is called in-process as a WSGI app with a prebuilt environ, so
only the application's own work is timed (no sockets, no server). Rounds of
the variants are interleaved, so a busy moment on the machine hits them all.

- bare: a Flask hello view;
- floor: the same view plus one hand-written SQLAlchemy Core ``SELECT`` of
  the key's row by primary key on the same pooled engine: the least that
  immediate revocation (reading the row on every request) can cost;
- wrapped: the bare view behind ``ApiKeyMiddleware`` with a valid key,
  usage logging off, then on (the default). With logging on, the request
  only buffers a row; the writer's time to store the round's rows is
  measured apart and reported both ways;
- bcrypt: the same, with the verified-key memory off, so bcrypt (cost 12)
  runs on every request: the design this package avoids.

Run ``make bench`` (or ``python benchmarks/bench_middleware.py``). Set
``APIKEY_BENCH_POSTGRES_URL`` to measure floor and wrapped on PostgreSQL too.
Last, the usage log writer's throughput is measured alone, in rows per second.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
import typing as t
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import sqlalchemy as sa
from flask import Flask
from werkzeug.test import EnvironBuilder, run_wsgi_app

from apikey_middleware import ApiKeyMiddleware, SQLAlchemyKeyStore
from apikey_middleware.store import ApiKey
from apikey_middleware.usage import UsageWriter

if t.TYPE_CHECKING:
    from _typeshed.wsgi import WSGIApplication, WSGIEnvironment


def _start_response(status: str, headers: list[tuple[str, str]], exc_info: t.Any = None) -> t.Any:
    return None


def _call(app: WSGIApplication, environ: WSGIEnvironment) -> None:
    body = app(dict(environ), _start_response)
    for _ in body:
        pass
    close = getattr(body, "close", None)
    if close is not None:
        close()


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
        self.samples.append((time.perf_counter() - started) / self.requests)
        if self.finish is not None:
            started = time.perf_counter()
            self.finish()
            self.finish_samples.append((time.perf_counter() - started) / self.requests)

    @property
    def median(self) -> float:
        return statistics.median(self.samples)


def hello_app() -> Flask:
    app = Flask("bench")

    @app.get("/hello")
    def hello() -> str:
        return "hello"

    return app


def floor_app(engine: sa.Engine, key_id: str) -> Flask:
    app = Flask("bench-floor")
    query = sa.select(ApiKey.__table__).where(ApiKey.__table__.c.id == sa.bindparam("id"))

    @app.get("/hello")
    def hello() -> str:
        with engine.connect() as connection:
            row = connection.execute(query, {"id": key_id}).first()
        assert row is not None
        return "hello"

    return app


def variants_for(label: str, url: str, requests: int, rounds_bcrypt: int) -> list[Variant]:
    store = SQLAlchemyKeyStore(url, bcrypt_rounds=12)
    store.metadata.drop_all(store.engine)
    store.create_schema()
    issued = store.create_key("bench", scopes=["hello"])
    uncached = SQLAlchemyKeyStore(store.engine, cache_size=0)
    environ = EnvironBuilder(
        path="/hello", headers=[("Authorization", f"Bearer {issued.key}")]
    ).get_environ()
    bare = hello_app()
    # The writer's thread is kept out of the timed requests (it would write
    # only after a second or 1000 rows anyway); each round's rows are
    # written right after it and that time is reported on its own.
    writer = UsageWriter(store, batch_size=requests + 1, max_pending=requests + 1, interval=3600)
    logging_on = ApiKeyMiddleware(bare.wsgi_app, store, usage_writer=writer)
    return [
        Variant(f"bare Flask ({label})", bare.wsgi_app, environ, requests),
        Variant(
            f"floor: bare + 1 SELECT ({label})",
            floor_app(store.engine, issued.id).wsgi_app,
            environ,
            requests,
        ),
        Variant(
            f"wrapped, valid key ({label})",
            ApiKeyMiddleware(bare.wsgi_app, store, log_usage=False),
            environ,
            requests,
        ),
        Variant(
            f"wrapped + usage log ({label})",
            logging_on,
            environ,
            requests,
            finish=logging_on.flush,
        ),
        Variant(
            f"bcrypt every request ({label})",
            ApiKeyMiddleware(bare.wsgi_app, uncached, log_usage=False),
            environ,
            rounds_bcrypt,
        ),
    ]


def report(variants: Iterable[Variant]) -> None:
    by_name = {variant.name: variant for variant in variants}
    print(f"\n{'variant':44} {'median µs':>10} {'min µs':>9} {'max µs':>10}")
    for variant in by_name.values():
        low, high = min(variant.samples), max(variant.samples)
        print(f"{variant.name:44} {variant.median * 1e6:10.1f} {low * 1e6:9.1f} {high * 1e6:10.1f}")
    print("\nratios (medians)")
    labels = sorted({name.rsplit("(", 1)[1].rstrip(")") for name in by_name})
    for label in labels:
        bare = by_name[f"bare Flask ({label})"].median
        floor = by_name[f"floor: bare + 1 SELECT ({label})"].median
        wrapped = by_name[f"wrapped, valid key ({label})"].median
        bcrypt = by_name[f"bcrypt every request ({label})"].median
        print(f"  {label}: wrapped / floor  = {wrapped / floor:6.3f}   (target <= 1.10)")
        print(f"  {label}: wrapped / bare   = {wrapped / bare:6.3f}")
        print(f"  {label}: floor / bare     = {floor / bare:6.3f}")
        print(f"  {label}: bcrypt / wrapped = {bcrypt / wrapped:6.0f}x  (target >= 200x)")
        logged = by_name[f"wrapped + usage log ({label})"]
        write = statistics.median(logged.finish_samples)
        print(
            f"  {label}: usage log on / off = {logged.median / wrapped:6.3f}"
            "   (request path; target <= 1.05)"
        )
        print(
            f"  {label}: usage log on / off = {(logged.median + write) / wrapped:6.3f}"
            f"   (with the writer's {write * 1e6:.1f} µs per row, done off the request path)"
        )


def writer_throughput(label: str, url: str, rows: int = 20_000) -> None:
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
    print(
        f"  usage writer ({label}): {statistics.median(rates):,.0f} rows/s (median of 3 x {rows:,})"
    )
    writer.close()
    store.metadata.drop_all(store.engine)
    store.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--requests", type=int, default=2000, help="requests per round")
    parser.add_argument("--bcrypt-requests", type=int, default=3, help="per round, bcrypt variant")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as folder:
        variants = variants_for(
            "SQLite", f"sqlite:///{Path(folder) / 'bench.db'}", args.requests, args.bcrypt_requests
        )
        postgres = os.environ.get("APIKEY_BENCH_POSTGRES_URL")
        if postgres:
            variants += variants_for("PostgreSQL", postgres, args.requests, args.bcrypt_requests)
        for variant in variants:
            variant.check()
            variant.run_round()  # warm up: pools filled, statements compiled, key verified
            variant.samples.clear()
        runners: list[Callable[[], None]] = [variant.run_round for variant in variants]
        for number in range(args.rounds):
            print(f"round {number + 1}/{args.rounds}", end="\r", flush=True)
            for run in runners:
                run()
        report(variants)
        print("\nusage log writer")
        writer_throughput("SQLite", f"sqlite:///{Path(folder) / 'writer.db'}")
        if postgres:
            writer_throughput("PostgreSQL", postgres)


if __name__ == "__main__":
    main()
