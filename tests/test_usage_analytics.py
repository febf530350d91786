"""Usage that scales: rows standing for many requests, summaries from
roll-ups, retention, and writes that count each request exactly once, on
every database."""

from __future__ import annotations

import logging
import threading
import typing as t
from collections import Counter
from datetime import UTC, datetime, timedelta, timezone

import pytest
import sqlalchemy as sa
from werkzeug.test import Client

from apikey_middleware import ApiKeyMiddleware, SQLAlchemyKeyStore, UsageBucket, UsageRecord
from apikey_middleware.buckets import BUCKETS
from apikey_middleware.schema import batches_table, rollups_table, usage_table
from apikey_middleware.usage import UsageWriter
from apikey_middleware.usage_log import PRUNE_BATCH

from .conftest import RecordingApp, StoreFactory, bearer, make_app, wait_until

BASE = datetime(2030, 5, 1, 10, 0, tzinfo=UTC)


def at(minutes: float) -> datetime:
    return BASE + timedelta(minutes=minutes)


def row(key_id: str, when: datetime, status: int = 200, path: str = "/v1/clients") -> UsageRecord:
    return UsageRecord(key_id, when, "GET", path, status, "203.0.113.9")


def requests_logged(store: SQLAlchemyKeyStore, key_id: str) -> int:
    return sum(record.requests for record in store.usage(key_id))


def summed(store: SQLAlchemyKeyStore, **options: t.Any) -> dict[str, int]:
    """Requests per bucket size, summed over the summary's buckets."""
    return {
        bucket: sum(item.requests for item in store.usage_summary(bucket=bucket, **options))
        for bucket in BUCKETS
    }


def by_status_over_rows(store: SQLAlchemyKeyStore, key_id: str) -> Counter[int]:
    counts: Counter[int] = Counter()
    for record in store.usage(key_id):
        counts[record.status] += record.requests
    return counts


def test_identical_requests_of_a_minute_share_a_row(store: SQLAlchemyKeyStore) -> None:
    issued = store.create_key("n")
    store.record_usage([row(issued.id, at(0.1)), row(issued.id, at(0.5))])
    store.record_usage([row(issued.id, at(0.05)), row(issued.id, at(0.9))])
    store.record_usage([row(issued.id, at(1.0))])  # the next minute
    store.record_usage([row(issued.id, at(0.2), status=404)])
    store.record_usage([row(issued.id, at(0.3), path="/v1/other")])
    store.record_usage([row(issued.id, at(0.4))._replace(remote_addr=None)])
    rows = sorted(store.usage(issued.id), key=lambda record: (record.occurred_at, record.status))
    assert [(r.occurred_at, r.status, r.path, r.remote_addr, r.requests) for r in rows] == [
        (at(0.05), 200, "/v1/clients", "203.0.113.9", 4),  # the first of the four
        (at(0.2), 404, "/v1/clients", "203.0.113.9", 1),
        (at(0.3), 200, "/v1/other", "203.0.113.9", 1),
        (at(0.4), 200, "/v1/clients", None, 1),
        (at(1.0), 200, "/v1/clients", "203.0.113.9", 1),
    ]
    assert requests_logged(store, issued.id) == 8


def test_a_summary_counts_per_bucket_and_status_oldest_first(store: SQLAlchemyKeyStore) -> None:
    issued = store.create_key("n", owner="acme")
    other = store.create_key("other", owner="acme")
    stranger = store.create_key("stranger", owner="else")
    store.record_usage(
        [
            row(issued.id, at(5)),
            row(issued.id, at(6), status=401),
            row(issued.id, at(65))._replace(requests=3),
            row(issued.id, at(-60 * 48)),
            row(other.id, at(7), status=500),
            row(stranger.id, at(8)),
        ]
    )
    assert store.usage_summary(key_id=issued.id, since=BASE, bucket="hour") == [
        UsageBucket(BASE, 2, {200: 1, 401: 1}),
        UsageBucket(at(60), 3, {200: 3}),
    ]
    assert store.usage_summary(key_id=issued.id, since=at(30), until=at(60), bucket="hour") == [
        UsageBucket(BASE, 2, {200: 1, 401: 1})  # whole buckets that overlap the range
    ]
    assert store.usage_summary(key_id=issued.id, since=at(6), until=at(7), bucket="minute") == [
        UsageBucket(at(6), 1, {401: 1})
    ]
    assert store.usage_summary(owner="acme", since=BASE, bucket="day") == [
        UsageBucket(BASE.replace(hour=0), 6, {200: 4, 401: 1, 500: 1})
    ]
    assert [item.requests for item in store.usage_summary(bucket="day")] == [1, 7]
    assert store.usage_summary(owner="nobody") == []
    (first, *_) = store.usage_summary(key_id=issued.id, bucket="minute")
    assert first.start == at(-60 * 48)
    assert first.start.tzinfo is UTC
    with pytest.raises(ValueError, match="bucket must be one of minute, hour, day"):
        store.usage_summary(bucket="week")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="since"):
        store.usage_summary(since=datetime(2030, 1, 1))


def test_summaries_agree_with_the_rows_after_a_writer_under_many_threads(
    store: SQLAlchemyKeyStore,
) -> None:
    keys = [store.create_key(f"k{n}", owner="acme") for n in range(3)]
    writer = UsageWriter(store, batch_size=50, interval=0.05)
    sent: Counter[tuple[str, int]] = Counter()
    lock = threading.Lock()

    def work(seed: int) -> None:
        mine: Counter[tuple[str, int]] = Counter()
        for n in range(300):
            issued = keys[(seed + n) % 3]
            status = (200, 200, 404, 500)[(seed * n) % 4]
            writer.record(issued.id, "GET", f"/p{n % 7}", status, f"10.0.0.{seed}")
            mine[issued.id, status] += 1
        with lock:
            sent.update(mine)

    threads = [threading.Thread(target=work, args=(seed,)) for seed in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    writer.close()
    assert writer.dropped == 0
    assert writer.written == 16 * 300
    for issued in keys:
        expected = {status: n for (key_id, status), n in sent.items() if key_id == issued.id}
        assert by_status_over_rows(store, issued.id) == expected
        total = sum(expected.values())
        assert summed(store, key_id=issued.id) == dict.fromkeys(BUCKETS, total)
        for bucket in BUCKETS:
            statuses: Counter[int] = Counter()
            for item in store.usage_summary(key_id=issued.id, bucket=bucket):
                statuses.update(item.by_status)
            assert statuses == expected, bucket
    assert summed(store, owner="acme") == dict.fromkeys(BUCKETS, 16 * 300)


def test_a_batch_written_twice_counts_once(store: SQLAlchemyKeyStore) -> None:
    issued = store.create_key("n")
    batch = [row(issued.id, at(0)), row(issued.id, at(0.5), status=404)]
    store.record_usage(batch, batch_id="a" * 32)
    store.record_usage(batch, batch_id="a" * 32)  # its first answer lost: sent again
    store.record_usage(batch, batch_id="b" * 32)  # another batch: counted
    assert by_status_over_rows(store, issued.id) == {200: 2, 404: 2}
    assert summed(store, key_id=issued.id) == dict.fromkeys(BUCKETS, 4)


def test_old_batch_ids_are_forgotten(store: SQLAlchemyKeyStore) -> None:
    issued = store.create_key("n")
    with store.engine.begin() as connection:
        connection.execute(
            sa.insert(batches_table).values(
                id="old", written_at=datetime.now(UTC) - timedelta(days=2)
            )
        )
    store.record_usage([row(issued.id, at(0))], batch_id="new")
    with store.engine.connect() as connection:
        left = connection.execute(sa.select(batches_table.c.id)).scalars().all()
    assert left == ["new"]


def test_top_paths_are_counted_in_requests(store: SQLAlchemyKeyStore) -> None:
    issued = store.create_key("n")
    store.record_usage(
        [
            row(issued.id, at(0), path="/a")._replace(requests=5),
            row(issued.id, at(1), path="/b")._replace(requests=2),
            row(issued.id, at(2), path="/b")._replace(requests=2),
            row(issued.id, at(3), path="/c"),
        ]
    )
    assert store.top_paths(issued.id) == [("/a", 5), ("/b", 4), ("/c", 1)]
    assert store.top_paths(issued.id, limit=1) == [("/a", 5)]
    assert store.top_paths(issued.id, since=at(1)) == [("/b", 4), ("/c", 1)]


def test_pruning_deletes_whole_days_in_batches_and_keeps_summaries_true(
    store: SQLAlchemyKeyStore,
) -> None:
    issued = store.create_key("n")
    old_day = BASE - timedelta(days=3)
    # More old rows than one delete takes, each a different path.
    store.record_usage(
        [
            row(issued.id, old_day + timedelta(seconds=n), path=f"/{n}")
            for n in range(PRUNE_BATCH + 7)
        ]
    )
    store.record_usage([row(issued.id, BASE - timedelta(hours=1)), row(issued.id, at(30))])
    statements: list[str] = []
    sa.event.listen(store.engine, "before_cursor_execute", lambda *args: statements.append(args[2]))
    # In the middle of BASE's day: the day before is deleted, BASE's kept.
    assert store.prune_usage(at(90)) == PRUNE_BATCH + 7
    deletes = [s for s in statements if s.lstrip().upper().startswith("DELETE FROM APIKEY_USAGE ")]
    assert len(deletes) == 2  # a full batch, then the rest
    assert sorted(r.occurred_at for r in store.usage(issued.id)) == [
        BASE - timedelta(hours=1),
        at(30),
    ]
    assert summed(store, key_id=issued.id) == dict.fromkeys(BUCKETS, 2)
    with store.engine.connect() as connection:
        oldest = connection.execute(sa.select(sa.func.min(rollups_table.c.start))).scalar()
    assert oldest == BASE.replace(hour=0)
    assert store.prune_usage(at(90)) == 0
    with pytest.raises(ValueError, match="before"):
        store.prune_usage(None)  # type: ignore[arg-type]


def test_the_writer_applies_the_retention_when_it_starts(
    store_factory: StoreFactory, caplog: pytest.LogCaptureFixture
) -> None:
    store = store_factory()
    issued = store.create_key("n")
    now = datetime.now(UTC)
    store.record_usage([row(issued.id, now - timedelta(days=100)), row(issued.id, now)])
    guarded = ApiKeyMiddleware(RecordingApp(), store, usage_retention=timedelta(days=90))
    with caplog.at_level(logging.INFO, logger="apikey_middleware"):
        Client(guarded).get("/", headers=bearer(issued.key))  # starts the writer
        writer = guarded.usage
        assert writer is not None
        wait_until(lambda: "deleted 1 usage rows older than the retention" in caplog.text)
        guarded.close()
    assert [r.occurred_at.date() for r in store.usage(issued.id)] == [now.date()] * 2
    assert writer._next_prune > 0  # the next one an hour later, not before


def test_writes_go_on_while_a_long_prune_runs(store_factory: StoreFactory) -> None:
    """Pruning a large table takes minutes: the usage of that time is
    written meanwhile, each second, not held back until the prune ends."""
    store = store_factory()
    issued = store.create_key("n")
    release = threading.Event()
    pruning = threading.Event()
    prune = store.prune_usage

    def slow_prune(before: datetime | timedelta) -> int:
        pruning.set()
        release.wait(30)
        return prune(before)

    store.prune_usage = slow_prune  # type: ignore[method-assign]
    writer = UsageWriter(store, retention=timedelta(days=1), interval=0.05)
    try:
        writer.record(issued.id, "GET", "/during", 200, None)
        assert pruning.wait(10)
        wait_until(lambda: [r.path for r in store.usage(issued.id)] == ["/during"])
    finally:
        release.set()
        writer.close()


def test_retention_is_refused_where_it_cannot_apply(store_factory: StoreFactory) -> None:
    store = store_factory()
    with pytest.raises(ValueError, match="usage_retention"):
        ApiKeyMiddleware(
            RecordingApp(),
            store,
            usage_writer=UsageWriter(store),
            usage_retention=timedelta(days=1),
        )

    class Sink:
        def record_usage(self, records: t.Any, **options: t.Any) -> None: ...

    with pytest.raises(ValueError, match="cannot prune"):
        UsageWriter(Sink(), retention=timedelta(days=1))


def test_a_failed_prune_is_logged_and_tried_again_an_hour_later(
    store_factory: StoreFactory, caplog: pytest.LogCaptureFixture
) -> None:
    store = store_factory()
    writer = UsageWriter(store, retention=timedelta(days=1))
    with store.engine.begin() as connection:
        connection.execute(sa.text(f"DROP TABLE {usage_table.name}"))
    with caplog.at_level(logging.ERROR, logger="apikey_middleware"):
        writer._prune_if_due()
        assert writer._pruner is not None
        writer._pruner.join(10)
        writer._prune_if_due()  # not due again so soon
    assert writer._pruner is not None
    writer._pruner.join(10)
    assert caplog.text.count("could not delete old usage, will try in an hour") == 1
    writer.close()


def test_last_used_at_is_the_latest_accepted_request_of_a_shared_row(
    store: SQLAlchemyKeyStore,
) -> None:
    issued = store.create_key("n")
    writer = UsageWriter(store, interval=3600)
    for accepted in (True, True, False):
        writer.record(issued.id, "GET", "/", 200 if accepted else 401, None, accepted=accepted)
    writer.record(issued.id, "GET", "/", 200, None, accepted=True)
    writer.record(issued.id, "GET", "/", 403, None, accepted=False)  # refused: not "used"
    writer.close()
    shared = [row for row in store.usage(issued.id) if row.status == 200]
    assert sum(row.requests for row in shared) == 3
    record = store.get_key(issued.id)
    assert record is not None
    assert record.last_used_at is not None
    # The last of the three accepted requests, not the first their row keeps.
    assert record.last_used_at >= max(row.occurred_at for row in shared)
    refused_at = max(row.occurred_at for row in store.usage(issued.id) if row.status == 403)
    assert record.last_used_at <= refused_at


def test_flask_takes_the_retention_as_a_duration(sqlite_store: SQLAlchemyKeyStore) -> None:
    app = make_app(sqlite_store, APIKEY_USAGE_RETENTION="90d")
    writer = app.extensions["apikeys"].guard.usage
    assert writer.retention == timedelta(days=90)
    writer.close()
    app = make_app(sqlite_store, APIKEY_USAGE_RETENTION=timedelta(hours=1))
    assert app.extensions["apikeys"].guard.usage.retention == timedelta(hours=1)
    app.extensions["apikeys"].guard.usage.close()
    for bad in ("soon", "0", 90):
        with pytest.raises(ValueError, match="APIKEY_USAGE_RETENTION"):
            make_app(sqlite_store, APIKEY_USAGE_RETENTION=bad)


def test_an_empty_batch_writes_nothing(store: SQLAlchemyKeyStore) -> None:
    store.record_usage([], batch_id="empty")
    with store.engine.connect() as connection:
        assert (
            connection.execute(sa.select(sa.func.count()).select_from(batches_table)).scalar() == 0
        )
    assert "UsageLog(" in repr(store._usage)


def test_a_forked_child_writes_its_own_rows_not_its_parents(
    sqlite_store: SQLAlchemyKeyStore,
) -> None:
    import os

    issued = sqlite_store.create_key("n")
    writer = UsageWriter(sqlite_store, interval=3600)
    for _ in range(5):
        writer.record(issued.id, "GET", "/parent", 200, None)
    writer.flush()
    writer.record(issued.id, "GET", "/parent", 200, None)
    pid = os.fork()
    if pid == 0:  # the child: as a pre-forking server's worker starts
        code = 1
        try:
            assert (writer.pending, writer.written, writer.dropped) == (0, 0, 0)
            writer.record(issued.id, "GET", "/child", 200, None)
            writer.close()
            code = 0 if (writer.written, writer.dropped) == (1, 0) else 1
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    writer.close()
    by_path: dict[str, int] = {}
    for row in sqlite_store.usage(issued.id):
        by_path[row.path] = by_path.get(row.path, 0) + row.requests
    assert writer.written == 6
    assert by_path == {"/parent": 6, "/child": 1}


@pytest.mark.parametrize(
    "moment",
    [
        timedelta(days=10**6),
        timedelta.max,
        datetime.min.replace(tzinfo=timezone(timedelta(hours=14))),
        datetime.max.replace(tzinfo=timezone(timedelta(hours=-14))),
    ],
)
def test_a_time_out_of_the_range_of_dates_is_a_value_error(
    sqlite_store: SQLAlchemyKeyStore, moment: datetime | timedelta
) -> None:
    issued = sqlite_store.create_key("n")
    calls: list[t.Callable[[], object]] = [
        lambda: sqlite_store.usage(issued.id, since=moment),
        lambda: sqlite_store.usage_summary(key_id=issued.id, since=moment),
        lambda: sqlite_store.usage_summary(key_id=issued.id, until=moment),
        lambda: sqlite_store.prune_usage(moment),
    ]
    for call in calls:
        with pytest.raises(ValueError, match="out of the range of dates"):
            call()


def test_an_owner_is_its_exact_text_on_every_database(store: SQLAlchemyKeyStore) -> None:
    """MySQL compares text regardless of case: an owner's keys and usage
    must not take in those of an owner whose name differs only in case."""
    mine = store.create_key("mine", owner="acme")
    theirs = store.create_key("theirs", owner="ACME")
    now = datetime.now(UTC)
    store.record_usage([row(mine.id, now), row(theirs.id, now), row(theirs.id, now, status=404)])
    assert [record.id for record in store.list_keys(owner="acme")] == [mine.id]
    assert [record.id for record in store.list_keys(owner="ACME")] == [theirs.id]
    (bucket,) = store.usage_summary(owner="acme", bucket="day")
    assert bucket.by_status == {200: 1}
    assert store.usage_summary(owner="Acme", bucket="day") == []
