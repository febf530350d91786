"""``make bench`` runs end to end (tiny counts; figures are not judged here)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from .servers import ROOT

pytestmark = pytest.mark.slow


def test_the_benchmark_suite_runs_and_prints_one_table() -> None:
    env = {
        name: value
        for name, value in os.environ.items()
        if name not in ("APIKEY_BENCH_POSTGRES_URL", "APIKEY_BENCH_MYSQL_URL")
    }
    env["APIKEY_BENCH_POSTGRES_URL"] = os.environ.get("APIKEY_TEST_POSTGRES_URL", "")
    env["APIKEY_BENCH_REDIS_URL"] = os.environ.get("APIKEY_TEST_REDIS_URL", "")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks",
            "--rounds=1",
            "--requests=20",
            "--server-rounds=1",
            "--usage-server-rounds=1",
            "--server-requests=50",
            "--flood-rounds=1",
            "--server-flood-rounds=1",
            "--server-flood-seconds=0.5",
            "--trials=2",
            "--memory-keys=2000",
            "--scan-mb=20",
            "--scan-rounds=1",
            "--dashboard-keys=30",
            "--dashboard-rounds=1",
            "--summary-requests=2000",
            "--summary-small=200",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout
    for line in (
        "wrapped / floor (SQLite)",
        "channel mode / bare (SQLite)",
        "bcrypt / wrapped (SQLite)",
        "immediate / floor, req/s (SQLite)",
        "time per request, bad checksum / no key",
        "legit p50, flood (check value) / no flood",
        "legit p50, flood (0.1.0 row, bounded) / no flood",
        "legit req/s, wrong-secret flood / no flood (closed loop)",
        "first request of a new key, wrong-secret flood / no flood",
        "most requests accepted after revoke() (SQLite)",
        "peak RSS growth over 2,000 bad keys, MB",
        "this repository: files/s",
        "generated 20 MB tree: MB/s",
        "30 keys, 30 shown: HTML+CSS+JS bytes",
        "defaults, writer included / floor (SQLite)",
        "usage log on / off, writer included, in-process (SQLite)",
        "usage log on / off, req/s (SQLite, channel)",
        "writer: requests logged per second, 1,000 paths (SQLite)",
        "summary time, 2,000 / 200 requests (SQLite)",
    ):
        assert line in out, line
    if env["APIKEY_BENCH_POSTGRES_URL"]:
        assert "p99 ms accepted after revoke() (PostgreSQL)" in out
        assert "p99 ms accepted after a plain SQL UPDATE (PostgreSQL, trigger)" in out
    if env["APIKEY_BENCH_REDIS_URL"]:
        assert "Redis round trips per request, three limits" in out
        assert "gunicorn req/s, a Redis limit on every key / none (SQLite, immediate)" in out
        if env["APIKEY_BENCH_POSTGRES_URL"]:
            assert "a Redis limit on every key / none (PostgreSQL, channel mode)" in out
