"""The usage log's cost, side by side in one run.

- in-process, the defaults (usage log on, the store's default revocation),
  the writer's one write a second charged to the requests: against the
  floor (bare Flask + one Core ``SELECT``), and usage log on against off,
  the variants taking turns every 100 requests;
- under gunicorn (2 workers), usage log on against off, immediate and
  channel mode;
- the writer's throughput in requests logged per second, one client on one
  path and on 1,000 paths;
- a summary of the same range over 10^4 and over 10^6 logged requests.
"""

from __future__ import annotations

import contextlib
import statistics
import time
from datetime import UTC, datetime, timedelta

from apikey_middleware import ApiKeyMiddleware, SQLAlchemyKeyStore, UsageRecord
from apikey_middleware.usage import UsageWriter
from apikey_middleware.usage_buffer import LANE_LENGTH

from ._table import Table, paired
from .apps import floor_app, hello_app
from .bench_middleware import Variant, environ_for
from .bench_server import serving
from .load import GENERATOR, load, wrk

SECTION = "usage log"
#: Seconds between the usage writer's writes, by default.
WRITER_INTERVAL = 1.0
#: Seconds of requests a variant runs before the next one takes its turn.
TURN = 0.015


def in_process(table: Table, databases: dict[str, str], *, rounds: int, requests: int) -> None:
    """Defaults against the floor, and usage log on against off, the
    writer's work included.

    The variants take turns of :data:`TURN` seconds, so that a slow spell
    of a shared machine (they last about a second here) falls on all of
    them alike. A round holds about one writer interval of requests of
    each variant; the usage log's writer makes the one write it would make
    in that time at the end of the round, timed, and that time is charged
    to the round's requests. Its thread does not run meanwhile (a round
    holds fewer requests than wake it): its work would land on whichever
    variant's turn it fell in.
    """
    variants: dict[str, dict[str, Variant]] = {}
    stores: list[SQLAlchemyKeyStore] = []
    middlewares: list[ApiKeyMiddleware] = []
    for label, url in databases.items():
        store = SQLAlchemyKeyStore(url)
        store.metadata.drop_all(store.engine)
        store.create_schema()
        issued = store.create_key("usage bench", scopes=["hello"])
        valid = environ_for(key=issued.key)
        # The defaults' writer, written by hand once a round (see above).
        writer = UsageWriter(store, interval=3600)
        defaults = ApiKeyMiddleware(hello_app().wsgi_app, store, usage_writer=writer)
        quiet = ApiKeyMiddleware(hello_app().wsgi_app, store, log_usage=False)
        middlewares += [defaults, quiet]
        stores.append(store)
        variants[label] = {
            "floor": Variant(
                f"floor: bare + 1 SELECT ({label})",
                floor_app(store.engine, issued.id).wsgi_app,
                valid,
                requests,
            ),
            "on": Variant(
                f"defaults, usage log on ({label}, {store.revocation})",
                defaults,
                valid,
                requests,
                finish=defaults.flush,
            ),
            "off": Variant(
                f"defaults, usage log off ({label}, {store.revocation})", quiet, valid, requests
            ),
        }
    for variant in (variant for group in variants.values() for variant in group.values()):
        variant.check()
        variant.run_round()
    for label, group in variants.items():
        chunk = max(1, round(TURN / (group["on"].median * 1e-6)))
        # About a writer interval of the defaults' requests per round.
        turns = max(1, min(round(WRITER_INTERVAL / TURN), (LANE_LENGTH - 1) // chunk))
        _interleaved(label, list(group.values()), rounds=rounds, turns=turns, chunk=chunk)
    for middleware in middlewares:
        middleware.close()
    for label, group in variants.items():
        on = group["on"]
        # The warm-up round's samples are left out.
        on_samples, floor_samples, off_samples = (
            group[name].samples[1:] for name in ("on", "floor", "off")
        )
        with_writer = [a + b for a, b in zip(on_samples, on.finish_samples[1:], strict=True)]
        table.figure(SECTION, group["floor"].name, floor_samples, "µs")
        table.figure(SECTION, f"{on.name}, writer included", with_writer, "µs")
        table.figure(SECTION, group["off"].name, off_samples, "µs")
        table.ratio(
            SECTION,
            f"defaults, writer included / floor ({label})",
            paired(with_writer, floor_samples),
            "<= 1.10",
            suffix=f"   (writer: {statistics.median(on.finish_samples[1:]):.2f} µs per request)",
        )
        table.ratio(
            SECTION,
            f"usage log on / off, writer included, in-process ({label})",
            paired(with_writer, off_samples),
            "<= 1.05",
        )
    for store in stores:
        store.close()


def _interleaved(
    label: str, variants: list[Variant], *, rounds: int, turns: int, chunk: int
) -> None:
    """Rounds of ``turns`` turns of ``chunk`` requests per variant, each
    round's finish timed after it."""
    for number in range(rounds):
        print(f"  usage in-process {label} round {number + 1}/{rounds}", end="\r", flush=True)
        spent = [0.0] * len(variants)
        for turn in range(turns):
            # Every other turn backwards: no variant always runs after the same one.
            order = range(len(variants)) if turn % 2 == 0 else range(len(variants))[::-1]
            for index in order:
                spent[index] += variants[index].run_chunk(chunk)
        for index, variant in enumerate(variants):
            variant.samples.append(spent[index] / (turns * chunk) * 1e6)
            if variant.finish is not None:
                started = time.perf_counter()
                variant.finish()
                elapsed = time.perf_counter() - started
                variant.finish_samples.append(elapsed / (turns * chunk) * 1e6)
    print()


def under_gunicorn(
    table: Table, databases: dict[str, tuple[str, str, str]], *, rounds: int, requests: int
) -> None:
    """Requests per second with the usage log on and off, immediate and
    channel mode, 2 gunicorn workers each, each server loaded for 2 s
    (1 s runs swung by 20 % with the shared machine's spells); and one app
    on two servers, whose ratio shows how far the noise alone goes."""
    loads: dict[str, tuple[int, dict[str, str]]] = {}
    with contextlib.ExitStack() as stack:
        for label, (url, key, key_id) in databases.items():
            env = {"BENCH_DATABASE_URL": url, "BENCH_KEY_ID": key_id}
            headers = {"Authorization": f"Bearer {key}"}
            for kind in ("wrapped", "wrapped+log", "channel", "channel+log"):
                port = stack.enter_context(serving(kind, env))
                loads[f"{kind} ({label})"] = (port, headers)
            # The same app twice: how far two identical servers measure apart.
            port = stack.enter_context(serving("wrapped", env))
            loads[f"wrapped, a second server ({label})"] = (port, headers)
        for name, (port, headers) in loads.items():
            warm = load(port, "/hello", headers, total=300)
            if set(warm.statuses) != {200}:
                raise SystemExit(f"{name}: answered {warm.statuses}")
        rates: dict[str, list[float]] = {name: [] for name in loads}
        for number in range(rounds):
            print(f"  usage gunicorn round {number + 1}/{rounds}", end="\r", flush=True)
            servers = list(loads.items())
            # Every other round backwards, as in-process.
            for name, (port, headers) in servers if number % 2 == 0 else servers[::-1]:
                if GENERATOR == "wrk":
                    result = wrk(port, "/hello", headers, seconds=max(2, round(requests / 1000)))
                else:
                    result = load(port, "/hello", headers, total=requests)
                rates[name].append(result.rate)
        print()
    section = f"usage log, gunicorn 2 workers, load from {GENERATOR}"
    for name, samples in rates.items():
        table.figure(section, f"{name}: req/s", samples, "req/s")
    for label in databases:
        for mode, kind in (("immediate", "wrapped"), ("channel", "channel")):
            table.ratio(
                section,
                f"usage log on / off, req/s ({label}, {mode})",
                paired(rates[f"{kind}+log ({label})"], rates[f"{kind} ({label})"]),
                ">= 0.95",
            )
        table.ratio(
            section,
            f"the same app on two servers, req/s ({label}, immediate): the noise",
            paired(rates[f"wrapped, a second server ({label})"], rates[f"wrapped ({label})"]),
        )


def writer_throughput(table: Table, label: str, url: str, requests: int = 20_000) -> None:
    """Requests logged per second through the writer: recorded, then
    written in batches, one client on one path and on 1,000 paths."""
    store = SQLAlchemyKeyStore(url, bcrypt_rounds=4)
    store.metadata.drop_all(store.engine)
    store.create_schema()
    key_id = store.create_key("writer").id
    writer = UsageWriter(store, max_pending=requests, batch_size=1000, interval=3600)
    writer._start = lambda: None  # type: ignore[method-assign]  # flushed here, not by a thread
    for paths in (1, 1000):
        rates = []
        targets = [f"/items/{n % paths}" for n in range(requests)]
        for _ in range(3):
            # Recording counts too: identical requests become one row there.
            started = time.perf_counter()
            for path in targets:
                writer.record(key_id, "GET", path, 200, "127.0.0.1")
            writer.flush()
            rates.append(requests / (time.perf_counter() - started))
        where = "one path" if paths == 1 else f"{paths:,} paths"
        table.figure(
            SECTION, f"writer: requests logged per second, {where} ({label})", rates, "req/s"
        )
    writer.close()
    store.metadata.drop_all(store.engine)
    store.close()


def _fill(store: SQLAlchemyKeyStore, key_id: str, requests: int, start: datetime) -> None:
    """``requests`` logged requests, one row each (different paths), spread
    evenly over the week from ``start``."""
    step = timedelta(days=7) / requests
    chunk: list[UsageRecord] = []
    for n in range(requests):
        status = 200 if n % 10 else 404
        chunk.append(
            UsageRecord(key_id, start + step * n, "GET", f"/items/{n % 997}", status, "10.0.0.1")
        )
        if len(chunk) == 20_000:
            store.record_usage(chunk)
            chunk = []
    store.record_usage(chunk)


def summary_cost(
    table: Table, label: str, url: str, *, small: int, large: int, rounds: int = 15
) -> None:
    """The time of one summary (a week by hour) over ``small`` and over
    ``large`` logged requests, in interleaved rounds."""
    store = SQLAlchemyKeyStore(url, bcrypt_rounds=4)
    store.metadata.drop_all(store.engine)
    store.create_schema()
    start = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(days=7)
    keys = {}
    for count in (small, large):
        key_id = store.create_key(f"summary {count}").id
        print(f"  logging {count:,} requests ({label})", end="\r", flush=True)
        _fill(store, key_id, count, start)
        keys[count] = key_id
    print()
    times: dict[int, list[float]] = {small: [], large: []}
    buckets = 0
    for _ in range(rounds):
        for count, key_id in keys.items():
            began = time.perf_counter()
            summary = store.usage_summary(key_id=key_id, since=start, bucket="hour")
            times[count].append((time.perf_counter() - began) * 1e3)
            if sum(item.requests for item in summary) != count:
                raise SystemExit(f"summary of {count} requests counts {summary}")
            buckets = len(summary)
    for count in (small, large):
        table.figure(
            SECTION,
            f"summary of a week by hour ({buckets} buckets), {count:,} requests ({label})",
            times[count],
            "ms",
        )
    table.ratio(
        SECTION,
        f"summary time, {large:,} / {small:,} requests ({label})",
        paired(times[large], times[small]),
        "<= 2.0",
        suffix=f"   (median {statistics.median(times[large]):.2f} ms)",
    )
    store.metadata.drop_all(store.engine)
    store.close()
