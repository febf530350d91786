"""``apikey usage``: charts by status class at 80 columns, top paths, the
latest rows, an owner's keys, JSON, pruning, and bad input."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from apikey_middleware import SQLAlchemyKeyStore, UsageRecord
from apikey_middleware.cli import main

from .conftest import TEST_ROUNDS

ANSI = re.compile(r"\x1b\[[0-9;]*m")


@pytest.fixture
def url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'cli.db'}"


@pytest.fixture
def store(url: str) -> SQLAlchemyKeyStore:
    key_store = SQLAlchemyKeyStore(url, bcrypt_rounds=TEST_ROUNDS)
    key_store.create_schema()
    return key_store


def run(url: str, *args: str) -> Result:
    return CliRunner().invoke(main, ["--database-url", url, *args], color=True)


def fill(store: SQLAlchemyKeyStore, key_id: str, now: datetime) -> int:
    """A day of traffic: each hour some 2xx, 4xx and 5xx; the requests sent."""
    rows = []
    for hour in range(24):
        when = now - timedelta(hours=hour)
        rows += [
            UsageRecord(key_id, when, "GET", "/v1/clients", 200, "10.0.0.1", 10 + hour * 40),
            UsageRecord(key_id, when, "POST", "/v1/clients", 201, "10.0.0.1", 3),
            UsageRecord(key_id, when, "GET", "/v1/missing", 404, "10.0.0.2", hour % 4),
            UsageRecord(key_id, when, "GET", "/v1/crash", 500, "10.0.0.2", hour % 3),
        ]
    store.record_usage([row for row in rows if row.requests])
    return sum(row.requests for row in rows)


def test_a_chart_per_hour_by_status_class_fits_80_columns(
    url: str, store: SQLAlchemyKeyStore
) -> None:
    issued = store.create_key("busy")
    now = datetime.now(UTC)
    sent = fill(store, issued.id, now)
    result = run(url, "usage", issued.id, "--by", "hour")
    assert result.exit_code == 0, result.output
    plain = ANSI.sub("", result.stdout)
    assert "\x1b[32m" in result.stdout  # 2xx in green on a terminal
    assert max(len(line) for line in plain.splitlines()) <= 80
    lines = plain.splitlines()
    assert lines[2].startswith("Requests per hour (UTC)")
    hours = [line for line in lines if re.match(r"\d{4}-\d\d-\d\d \d\d:00  ", line)]
    assert len(hours) == 25  # the hour 24 hours ago, to this one
    this_hour = now.strftime("%Y-%m-%d %H:00")
    (current,) = [line for line in hours if line.startswith(this_hour)]
    assert "2xx 13" in current
    assert "4xx" not in current  # none this hour
    assert "█" in current
    busiest = max(hours, key=lambda line: int(line.split()[2]))
    assert busiest.count("█") + busiest.count("▒") + busiest.count("░") >= 30
    assert "Top 3 paths" in plain
    assert plain.index("/v1/clients") < plain.index("/v1/missing")
    assert "Latest 20 rows" in plain
    assert f"{sent} requests in all" in plain


def test_a_chart_per_minute_and_the_default_per_day(url: str, store: SQLAlchemyKeyStore) -> None:
    issued = store.create_key("n")
    now = datetime.now(UTC)
    store.record_usage(
        [
            UsageRecord(issued.id, now - timedelta(minutes=5), "GET", "/a", 200, None, 7),
            UsageRecord(issued.id, now - timedelta(days=2), "GET", "/a", 503, None, 2),
        ]
    )
    minutes = ANSI.sub("", run(url, "usage", issued.id, "--by", "minute").stdout)
    assert "Requests per minute (UTC)" in minutes
    assert len(re.findall(r"^\d{4}-\d\d-\d\d \d\d:\d\d  ", minutes, re.MULTILINE)) == 61
    assert "2xx 7" in minutes
    assert "5xx 2" not in minutes  # two days ago: outside the last hour
    days = ANSI.sub("", run(url, "usage", issued.id).stdout)
    assert "Requests per day (UTC)" in days
    assert len(re.findall(r"^\d{4}-\d\d-\d\d  ", days, re.MULTILINE)) == 3
    assert "5xx 2" in days
    assert "(7 requests)" in days


def test_json_gives_the_rows_or_the_buckets(url: str, store: SQLAlchemyKeyStore) -> None:
    issued = store.create_key("n")
    now = datetime.now(UTC)
    fill(store, issued.id, now)
    buckets = json.loads(run(url, "usage", issued.id, "--by", "day", "--json").stdout)
    assert {item["start"][:10] for item in buckets} <= {
        now.date().isoformat(),
        (now - timedelta(days=1)).date().isoformat(),
    }
    assert sum(item["requests"] for item in buckets) == sum(
        count for item in buckets for count in item["by_status"].values()
    )
    assert set(buckets[0]["by_status"]) <= {"200", "201", "404", "500"}
    rows = json.loads(run(url, "usage", issued.id, "--json", "--since", "1h").stdout)
    assert {row["status"] for row in rows} <= {200, 201, 404, 500}
    assert all(row["requests"] >= 1 for row in rows)
    # The newest 1000 rows by default (a flooded key's log is huge), or --limit.
    every = json.loads(run(url, "usage", issued.id, "--json").stdout)
    assert len(every) == 24 * 4 - 14  # fill's rows, those of no request left out
    newest = json.loads(run(url, "usage", issued.id, "--json", "--limit", "3").stdout)
    assert newest == every[:3]
    assert run(url, "usage", issued.id, "--json", "--limit", "0").exit_code == 2


def test_a_short_since_shows_the_paths_and_rows_of_the_buckets_it_charts(
    url: str, store: SQLAlchemyKeyStore
) -> None:
    """The chart counts the whole bucket ``--since`` falls in; its top paths
    and latest rows are those of the same buckets, not an empty list."""
    issued = store.create_key("n")
    now = datetime.now(UTC)
    earlier = now.replace(minute=0, second=0, microsecond=0)
    store.record_usage([UsageRecord(issued.id, earlier, "GET", "/early", 200, None, 3)])
    for by in ("hour", "day"):
        result = run(url, "usage", issued.id, "--by", by, "--since", "1s")
        assert result.exit_code == 0, result.output
        text = ANSI.sub("", result.output)
        assert "Top 1 path\n" in text
        assert "Latest 1 row (" in text
        assert text.count("/early") == 2  # a top path and a latest row
        assert text.rstrip().endswith("3 requests in all")


def test_a_long_chart_counts_its_quiet_stretches_instead_of_hiding_them(
    url: str, store: SQLAlchemyKeyStore
) -> None:
    issued = store.create_key("n")
    now = datetime.now(UTC).replace(second=30)
    store.record_usage(
        [
            UsageRecord(issued.id, now - timedelta(minutes=90), "GET", "/a", 200, None, 2),
            UsageRecord(issued.id, now - timedelta(minutes=30), "GET", "/a", 404, None, 1),
        ]
    )
    result = run(url, "usage", issued.id, "--by", "minute", "--since", "2h")
    assert result.exit_code == 0, result.output
    lines = ANSI.sub("", result.stdout).splitlines()
    charted = [line for line in lines if re.match(r"\d{4}-\d\d-\d\d \d\d:\d\d  ", line)]
    assert len(charted) == 2  # 121 minutes: too many lines for one each
    quiet = [
        int(m.group(1)) for line in lines if (m := re.search(r"\((\d+) quiet minutes?\)", line))
    ]
    assert len(quiet) == 3  # before, between and after the two busy minutes
    assert sum(quiet) + len(charted) in (121, 122)  # the minute may turn meanwhile
    assert quiet[1] == 59


def test_huge_counts_and_long_addresses_still_fit_80_columns(
    url: str, store: SQLAlchemyKeyStore
) -> None:
    issued = store.create_key("n")
    now = datetime.now(UTC)
    address = "2001:0db8:85a3:0000:0000:8a2e:0370:7334"
    store.record_usage(
        [
            UsageRecord(issued.id, now, "GET", "/v1/invoices", 200, address, 12345678),
            UsageRecord(issued.id, now, "OPTIONS", "/v1/clients", 301, address, 234567),
            UsageRecord(issued.id, now, "GET", "/v1/clients", 404, "10.0.0.1", 1234567),
            UsageRecord(issued.id, now, "GET", "/v1/crash", 503, "10.0.0.1", 123456),
        ]
    )
    result = run(url, "usage", issued.id, "--by", "hour")
    assert result.exit_code == 0, result.output
    plain = ANSI.sub("", result.stdout)
    assert max(len(line) for line in plain.splitlines()) <= 80
    assert "13938268" in plain  # the total stays exact; the classes in short
    assert "2xx 12M  3xx 235k  4xx 1.2M  5xx 123k" in plain
    (invoices,) = [line for line in plain.splitlines() if "(12345678 requests)" in line]
    assert "/v1/invoices  2001:…7334  " in invoices  # the path whole, the address cut
    (options,) = [line for line in plain.splitlines() if "(234567 requests)" in line]
    assert "OPTIONS /v1/clients  2001:0…0:7334  " in options


def test_an_owners_keys_together(url: str, store: SQLAlchemyKeyStore) -> None:
    first = store.create_key("first", owner="acme")
    second = store.create_key("second", owner="acme")
    store.create_key("idle", owner="acme")
    stranger = store.create_key("stranger", owner="other")
    now = datetime.now(UTC)
    store.record_usage(
        [
            UsageRecord(first.id, now, "GET", "/a", 200, None, 5),
            UsageRecord(second.id, now, "GET", "/a", 404, None, 2),
            UsageRecord(stranger.id, now, "GET", "/a", 200, None, 100),
        ]
    )
    result = run(url, "usage", "--owner", "acme", "--by", "hour")
    assert result.exit_code == 0, result.output
    plain = ANSI.sub("", result.stdout)
    assert "Usage of the 3 keys of acme" in plain
    assert "2xx 5  4xx 2" in plain
    assert re.search(rf"^{first.id}\s+5\s+active\s+first$", plain, re.MULTILINE)
    assert re.search(rf"^{second.id}\s+2\s+active\s+second$", plain, re.MULTILINE)
    (bucket,) = json.loads(run(url, "usage", "--owner", "acme", "--json").stdout)
    assert bucket["by_status"] == {"200": 5, "404": 2}
    nothing = run(url, "usage", "--owner", "acme", "--since", "1m", "--by", "minute")
    assert "Usage of the 3 keys of acme" in nothing.stdout


def test_prune_deletes_old_usage(url: str, store: SQLAlchemyKeyStore) -> None:
    issued = store.create_key("n")
    now = datetime.now(UTC)
    store.record_usage(
        [
            UsageRecord(issued.id, now - timedelta(days=100), "GET", "/old", 200, None),
            UsageRecord(issued.id, now, "GET", "/new", 200, None),
        ]
    )
    result = run(url, "usage", "prune", "--older-than", "90d")
    assert result.exit_code == 0, result.output
    cut = (now - timedelta(days=90)).date().isoformat()
    assert result.stdout == f"Deleted 1 usage row from before {cut}.\n"
    assert [row.path for row in store.usage(issued.id)] == ["/new"]
    assert "Deleted 0 usage rows" in run(url, "usage", "prune", "--older-than", "90d").stdout


def test_no_requests_is_said_so(url: str, store: SQLAlchemyKeyStore) -> None:
    quiet = store.create_key("quiet", owner="calm")
    assert "No requests logged." in run(url, "usage", quiet.id, "--by", "day").stdout
    assert (
        "No requests logged in that period." in run(url, "usage", quiet.id, "--by", "hour").stdout
    )
    assert "No requests logged" in run(url, "usage", "--owner", "calm").stdout


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["usage", "ID", "--by", "week"], 2, "'week' is not one of"),
        (["usage", "ID", "--since", "soon"], 2, "not a duration"),
        (["usage"], 2, "give a key's ID, or --owner"),
        (["usage", "ID", "--owner", "acme"], 2, "not both"),
        (["usage", "--owner", "nobody"], 1, "no API key has the owner nobody"),
        (["usage", "prune"], 2, "needs --older-than"),
        (["usage", "prune", "--older-than", "0"], 2, "longer than 0"),
        (["usage", "prune", "--older-than", "ninety"], 2, "not a duration"),
        (["usage", "prune", "--older-than", "90d", "--json"], 2, "--older-than only"),
        (["usage", "ID", "--older-than", "90d"], 2, "goes with 'apikey usage prune'"),
        (["usage", "ID", "--limit", "3"], 2, "--limit goes with --json"),
        (["usage", "ID", "--by", "hour", "--json", "--limit", "3"], 2, "--limit goes with --json"),
        (["usage", "--owner", "acme", "--json", "--limit", "1"], 2, "--limit goes with --json"),
        (["usage", "prune", "--older-than", "90d", "--limit", "1"], 2, "--older-than only"),
        (["usage", "ID", "--limit", "0", "--json"], 2, "0 is not in the range"),
        (["usage", "nosuchkey00000"], 1, "no API key with id 'nosuchkey00000'"),
    ],
)
def test_bad_input_is_one_line_and_a_non_zero_exit(
    url: str, store: SQLAlchemyKeyStore, args: list[str], code: int, message: str
) -> None:
    key_id = store.create_key("n").id
    result = run(url, *[key_id if arg == "ID" else arg for arg in args])
    assert result.exit_code == code, result.output
    assert message in result.stderr
    assert "Traceback" not in result.output
    # One line, usage errors too (click's own add the usage and a hint).
    assert len(result.stderr.splitlines()) == 1, result.stderr
    assert result.stderr.startswith("Error: ")


def test_a_long_range_by_minute_shows_only_the_minutes_with_requests(
    url: str, store: SQLAlchemyKeyStore
) -> None:
    issued = store.create_key("n")
    now = datetime.now(UTC)
    store.record_usage(
        [
            UsageRecord(issued.id, now - timedelta(days=3), "GET", "/a", 200, None),
            UsageRecord(issued.id, now, "GET", "/a", 404, None),
        ]
    )
    out = ANSI.sub("", run(url, "usage", issued.id, "--by", "minute", "--since", "7d").stdout)
    minutes = re.findall(r"^\d{4}-\d\d-\d\d \d\d:\d\d  .*$", out, re.MULTILINE)
    assert len(minutes) == 2  # not 10,080 lines
    assert "2xx 1" in minutes[0]
    assert "4xx 1" in minutes[1]


def test_an_odd_owner_gets_a_short_clear_error(url: str, store: SQLAlchemyKeyStore) -> None:
    store.create_key("n", owner="acme")
    surrogate = run(url, "usage", "--owner", "\udcff\udcfe")
    assert surrogate.exit_code == 2
    assert "is not valid text" in surrogate.output
    assert "codec" not in surrogate.output
    long = run(url, "usage", "--owner", "x" * 5000)
    assert long.exit_code == 1
    assert len(long.output) < 200
