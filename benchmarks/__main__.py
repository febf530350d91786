"""``make bench``: every benchmark in one run, then one table.

SQLite always; PostgreSQL with ``APIKEY_BENCH_POSTGRES_URL``; MySQL or
MariaDB (revocation latency of channel mode's polling) with
``APIKEY_BENCH_MYSQL_URL``; rate limits counted in Redis with
``APIKEY_BENCH_REDIS_URL`` (keys under a prefix of the run's own, deleted
afterwards). The named databases' key tables are dropped and made again.
Every figure is a median over rounds with min-max; every ratio compares
figures measured side by side in this run.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

from apikey_middleware import SQLAlchemyKeyStore

from . import (
    bench_abuse,
    bench_dashboard,
    bench_flood,
    bench_middleware,
    bench_ratelimit,
    bench_revocation,
    bench_scan,
    bench_server,
    bench_usage,
)
from ._table import Table


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("--rounds", type=int, default=25, help="in-process rounds")
    parser.add_argument("--requests", type=int, default=600, help="per in-process round")
    parser.add_argument("--server-rounds", type=int, default=9)
    parser.add_argument(
        "--usage-server-rounds", type=int, default=15, help="usage log on / off under gunicorn"
    )
    parser.add_argument("--server-requests", type=int, default=1000)
    parser.add_argument("--flood-rounds", type=int, default=9)
    parser.add_argument("--server-flood-rounds", type=int, default=5)
    parser.add_argument("--server-flood-seconds", type=float, default=3.0)
    parser.add_argument("--trials", type=int, default=30, help="revocation latency trials")
    parser.add_argument("--memory-keys", type=int, default=1_000_000)
    parser.add_argument("--scan-mb", type=int, default=1024, help="size of the generated tree")
    parser.add_argument("--scan-rounds", type=int, default=3)
    parser.add_argument("--dashboard-keys", type=int, default=1000, help="keys of one account")
    parser.add_argument("--dashboard-rounds", type=int, default=5)
    parser.add_argument(
        "--summary-requests", type=int, default=1_000_000, help="the larger usage summary"
    )
    parser.add_argument("--summary-small", type=int, default=10_000)
    parts = [
        "in-process",
        "server",
        "abuse",
        "revocation",
        "memory",
        "scan",
        "dashboard",
        "rate-limits",
        "usage",
    ]
    parser.add_argument("--only", nargs="*", choices=parts)
    args = parser.parse_args(argv)
    wanted = set(args.only or parts)
    started = time.monotonic()
    table = Table()
    with tempfile.TemporaryDirectory() as folder:
        sqlite = f"sqlite:///{folder}/bench.db"
        postgres = os.environ.get("APIKEY_BENCH_POSTGRES_URL")
        mysql = os.environ.get("APIKEY_BENCH_MYSQL_URL")
        redis = os.environ.get("APIKEY_BENCH_REDIS_URL")
        servers = {"SQLite": sqlite} | ({"PostgreSQL": postgres} if postgres else {})
        if "in-process" in wanted:
            bench_middleware.run(
                table, sqlite, postgres, rounds=args.rounds, requests=args.requests
            )
        if "server" in wanted:
            keys = {}
            for label, url in servers.items():
                store = SQLAlchemyKeyStore(url)
                store.create_schema()
                issued = store.create_key(f"server bench {label}")
                keys[label] = (url, issued.key, issued.id)
                store.close()
            bench_server.run(table, keys, rounds=args.server_rounds, requests=args.server_requests)
        if "abuse" in wanted:
            bench_abuse.flood(
                table, f"sqlite:///{folder}/flood.db", rounds=args.flood_rounds, requests=2000
            )
            bench_flood.run(
                table,
                f"sqlite:///{folder}/flood-server.db",
                rounds=args.server_flood_rounds,
                seconds=args.server_flood_seconds,
            )
        if "revocation" in wanted:
            latency = {"SQLite": f"sqlite:///{folder}/revocation.db"}
            latency |= {"PostgreSQL": postgres} if postgres else {}
            latency |= {"MySQL/MariaDB": mysql} if mysql else {}
            bench_revocation.run(table, latency, count=args.trials)
        if "rate-limits" in wanted and redis:
            bench_ratelimit.in_process(
                table,
                f"sqlite:///{folder}/limits.db",
                redis,
                rounds=args.rounds,
                requests=args.requests,
            )
            bench_ratelimit.under_gunicorn(
                table,
                {"SQLite": f"sqlite:///{folder}/limits-server.db"}
                | ({"PostgreSQL": postgres} if postgres else {}),
                redis,
                rounds=args.server_rounds,
                requests=args.server_requests,
            )
        elif "rate-limits" in wanted:
            print("  rate limits: APIKEY_BENCH_REDIS_URL is not set, skipped")
        if "memory" in wanted:
            bench_abuse.memory(table, f"sqlite:///{folder}/memory.db", args.memory_keys)
        if "scan" in wanted:
            bench_scan.run(table, megabytes=args.scan_mb, rounds=args.scan_rounds)
        if "dashboard" in wanted:
            bench_dashboard.run(
                table,
                f"sqlite:///{folder}/dashboard.db",
                keys=args.dashboard_keys,
                rounds=args.dashboard_rounds,
            )
        if "usage" in wanted:
            bench_usage.in_process(
                table,
                {label: url.replace("bench.db", "usage.db") for label, url in servers.items()},
                rounds=args.rounds,  # each about a second of each variant
                requests=args.requests,
            )
            keys = {}
            for label, url in servers.items():
                url = url.replace("bench.db", "usage-server.db")
                store = SQLAlchemyKeyStore(url)
                store.metadata.drop_all(store.engine)
                store.create_schema()
                issued = store.create_key(f"usage server bench {label}")
                keys[label] = (url, issued.key, issued.id)
                store.close()
            bench_usage.under_gunicorn(
                table, keys, rounds=args.usage_server_rounds, requests=args.server_requests
            )
            for label, url in servers.items():
                url = url.replace("bench.db", "usage-writer.db")
                bench_usage.writer_throughput(table, label, url)
                bench_usage.summary_cost(
                    table,
                    label,
                    url.replace("usage-writer.db", "summary.db"),
                    small=args.summary_small,
                    large=args.summary_requests,
                )
        if "in-process" in wanted:
            for label, url in servers.items():
                bench_middleware.writer_throughput(table, label, url.replace("bench.db", "w.db"))
    table.print()
    print(f"\n(all in {time.monotonic() - started:.0f} s)")


if __name__ == "__main__":
    main()
