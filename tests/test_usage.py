"""Usage logging: what is logged, that it is batched, bounded, and never fails a request."""

from __future__ import annotations

import contextlib
import itertools
import logging
import threading
import tracemalloc
import typing as t
from collections.abc import Iterable, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from flask import Flask
from werkzeug.middleware.dispatcher import DispatcherMiddleware
from werkzeug.test import Client, create_environ, run_wsgi_app

from apikey_middleware import ApiKeyMiddleware, IssuedKey, SQLAlchemyKeyStore, usage_records
from apikey_middleware.flask import ApiKeys, require_scopes
from apikey_middleware.keys import generate_key, holds_key, redact_secrets
from apikey_middleware.usage import MAX_ADDRESS_LENGTH, REFUSED_TARGETS, UsageRecord, UsageWriter
from apikey_middleware.usage_buffer import DRAIN_CHUNK

from .conftest import TEST_ROUNDS, RecordingApp, StoreFactory, bearer

if t.TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIEnvironment


@pytest.fixture
def key(sqlite_store: SQLAlchemyKeyStore) -> IssuedKey:
    return sqlite_store.create_key("n", scopes=["clients:read"])


@pytest.fixture
def middleware(sqlite_store: SQLAlchemyKeyStore) -> Iterator[ApiKeyMiddleware]:
    guarded = ApiKeyMiddleware(
        RecordingApp(), sqlite_store, rules=[("POST", "/v1/clients", "clients:write")]
    )
    yield guarded
    guarded.close()


def requests_logged(store: SQLAlchemyKeyStore, key_id: str) -> int:
    """How many requests the key's rows stand for (identical ones of a
    minute share a row)."""
    return sum(row.requests for row in store.usage(key_id))


def logged(store: SQLAlchemyKeyStore, key_id: str) -> list[tuple[str, str, int, str | None]]:
    return [(r.method, r.path, r.status, r.remote_addr) for r in reversed(store.usage(key_id))]


def test_every_request_with_a_known_key_id_is_logged(
    middleware: ApiKeyMiddleware, sqlite_store: SQLAlchemyKeyStore, key: IssuedKey
) -> None:
    client = Client(middleware)
    wrong_secret = generate_key("test", key.id).key
    remote = {"REMOTE_ADDR": "127.0.0.1"}
    client.get("/v1/clients?secret=no", headers=bearer(key.key), environ_base=remote)
    client.post("/v1/clients", headers=bearer(key.key), environ_base=remote)
    client.get("/v1/clients", headers=bearer(wrong_secret), environ_base=remote)
    sqlite_store.revoke(key.id)
    client.get("/after", headers=bearer(key.key), environ_base=remote)
    middleware.flush()
    assert logged(sqlite_store, key.id) == [
        ("GET", "/v1/clients", 200, "127.0.0.1"),
        ("POST", "/v1/clients", 403, "127.0.0.1"),
        ("GET", "/v1/clients", 401, "127.0.0.1"),
        ("GET", "/after", 401, "127.0.0.1"),
    ]
    record = sqlite_store.get_key(key.id)
    assert record is not None
    assert record.last_used_at is not None


def test_unknown_ids_and_malformed_keys_are_not_logged(
    middleware: ApiKeyMiddleware, sqlite_store: SQLAlchemyKeyStore, key: IssuedKey
) -> None:
    client = Client(middleware)
    stranger = generate_key("test")
    client.get("/", headers=bearer(stranger.key))
    client.get("/", headers=bearer(key.key[:-1]))
    client.get("/")
    middleware.flush()
    with sqlite_store.engine.connect() as connection:
        assert connection.execute(sa.text("SELECT count(*) FROM apikey_usage")).scalar() == 0


def test_logging_can_be_turned_off(sqlite_store: SQLAlchemyKeyStore, key: IssuedKey) -> None:
    guarded = ApiKeyMiddleware(RecordingApp(), sqlite_store, log_usage=False)
    Client(guarded).get("/", headers=bearer(key.key))
    guarded.flush()
    guarded.close()
    assert guarded.usage is None
    assert sqlite_store.usage(key.id) == []


def test_app_status_is_logged_even_when_the_app_fails(
    sqlite_store: SQLAlchemyKeyStore, key: IssuedKey
) -> None:
    def teapot(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        if environ["PATH_INFO"] == "/boom":
            raise RuntimeError("app bug")
        start_response("418 I'm a teapot", [])
        return [b""]

    guarded = ApiKeyMiddleware(teapot, sqlite_store)
    client = Client(guarded)
    client.get("/tea", headers=bearer(key.key))
    with pytest.raises(RuntimeError):
        client.get("/boom", headers=bearer(key.key))
    guarded.close()
    assert [row[1:3] for row in logged(sqlite_store, key.id)] == [("/tea", 418), ("/boom", 500)]


@pytest.mark.parametrize(
    ("line", "code"),
    [
        ("404 Not Found", 404),
        ("204", 204),
        ("599 Custom Reason", 599),
        ("200OK", 0),
        ("2000 Too long", 0),
        ("099 Too small", 0),
        ("abc", 0),
        ("", 0),
        ("-10 Negative", 0),
        (" 20 Spaced", 0),
        ("٢٠٠ Arabic-Indic digits", 0),
        ("２００ Fullwidth digits", 0),
        ("404 " + "long reason " * 100, 404),
    ],
)
def test_the_code_of_any_status_line_is_logged_or_zero_when_it_has_none(
    sqlite_store: SQLAlchemyKeyStore, key: IssuedKey, line: str, code: int
) -> None:
    def answering(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        start_response(line, [])
        return [b""]

    guarded = ApiKeyMiddleware(answering, sqlite_store)
    for _ in range(2):  # the second answer reads the code of a line seen before
        run_wsgi_app(guarded, create_environ("/x", headers=bearer(key.key)))
    guarded.close()
    assert [row[2] for row in logged(sqlite_store, key.id)] == [code]
    assert requests_logged(sqlite_store, key.id) == 2
    # Only short lines are remembered: an app's long reasons cost no memory.
    assert all(len(known) <= 64 for known in usage_records._STATUS_CODES)


class _OddStatus(str):
    """A status line that will not be hashed."""

    __slots__ = ()

    def __hash__(self) -> int:
        raise ValueError("no hashing")


@pytest.mark.parametrize(
    ("status", "code"), [(200, 0), (None, 0), (b"200 OK", 0), (_OddStatus("418 Teapot"), 418)]
)
def test_a_status_that_is_not_a_plain_string_is_logged_not_raised(
    sqlite_store: SQLAlchemyKeyStore, key: IssuedKey, status: object, code: int
) -> None:
    seen: list[object] = []

    def answering(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        start_response(status, [])  # type: ignore[arg-type]
        return [b""]

    def server_start_response(status: object, headers: object, exc_info: object = None) -> None:
        seen.append(status)

    guarded = ApiKeyMiddleware(answering, sqlite_store)
    guarded(create_environ("/x", headers=bearer(key.key)), server_start_response)  # type: ignore[arg-type]
    guarded.close()
    assert seen == [status]  # the server gets it, to refuse as it will
    assert [row[2] for row in logged(sqlite_store, key.id)] == [code]


def test_a_generator_that_fails_before_it_starts_the_response_is_logged_as_500(
    sqlite_store: SQLAlchemyKeyStore, key: IssuedKey
) -> None:
    def streaming(environ: WSGIEnvironment, start_response: StartResponse) -> Iterator[bytes]:
        if environ["PATH_INFO"] == "/fails":
            raise RuntimeError("app bug")
        start_response("200 OK", [])
        yield b"streamed"

    guarded = ApiKeyMiddleware(streaming, sqlite_store)
    for path in ("/fails", "/works"):
        # As a WSGI server does: read the body, close it whatever happens.
        body = guarded(create_environ(path, headers=bearer(key.key)), lambda *args: None)  # type: ignore[arg-type]
        try:
            with contextlib.suppress(RuntimeError):
                assert list(body) == [b"streamed"]
        finally:
            body.close()  # type: ignore[attr-defined]
    guarded.close()
    assert [row[1:3] for row in logged(sqlite_store, key.id)] == [("/fails", 500), ("/works", 200)]


def test_the_path_logged_is_the_one_judged_even_when_a_dispatcher_rewrites_it(
    sqlite_store: SQLAlchemyKeyStore, key: IssuedKey
) -> None:
    mounted = DispatcherMiddleware(RecordingApp(), {"/api": RecordingApp()})
    guarded = ApiKeyMiddleware(mounted, sqlite_store)
    Client(guarded).get("/api/v1/clients", headers=bearer(key.key))
    guarded.close()
    assert logged(sqlite_store, key.id) == [("GET", "/api/v1/clients", 200, None)]


def test_flask_views_log_their_own_status(tmp_path: Path) -> None:
    app = Flask(__name__)
    app.config.update(
        APIKEY_DATABASE_URL=f"sqlite:///{tmp_path / 'k.db'}", APIKEY_BCRYPT_ROUNDS=TEST_ROUNDS
    )
    apikeys = ApiKeys(app)

    @app.get("/read")
    @require_scopes("clients:read")
    def read() -> str:
        return "ok"

    @app.get("/write")
    @require_scopes("clients:write")
    def write() -> str:
        return "ok"

    with app.app_context():
        store = apikeys.store
        store.create_schema()
        issued = store.create_key("n", scopes=["clients:read"])
        client = app.test_client()
        client.get("/read", headers=bearer(issued.key))
        client.get("/write", headers=bearer(issued.key))
        # No view reads the key of a request to an unrouted path (SPEC 4).
        client.get("/nowhere", headers=bearer(issued.key))
        apikeys.middleware.close()
        assert [row[1:3] for row in logged(store, issued.id)] == [
            ("/read", 200),
            ("/write", 403),
        ]
        store.close()


def test_writer_batches_in_the_background(sqlite_store: SQLAlchemyKeyStore, key: IssuedKey) -> None:
    writer = UsageWriter(sqlite_store, batch_size=10, interval=60)
    for number in range(25):
        writer.record(key.id, "GET", f"/{number}", 200, None)
    deadline = threading.Event()
    for _ in range(50):
        if writer.written >= 20:
            break
        deadline.wait(0.1)
    assert writer.written >= 20  # two full batches, long before the interval
    writer.close()
    assert writer.written == 25
    assert requests_logged(sqlite_store, key.id) == 25


class SlowSink:
    """A sink whose every write takes a while, as a database's does."""

    def __init__(self) -> None:
        self.writes = 0
        self.requests = 0

    def record_usage(
        self,
        records: Sequence[UsageRecord],
        *,
        last_used: t.Any = None,
        batch_id: str | None = None,
    ) -> None:
        threading.Event().wait(0.01)
        self.writes += 1
        self.requests += sum(record.requests for record in records)


def test_under_a_steady_load_the_writer_writes_once_per_interval() -> None:
    """Rows that come while a batch is written wait for the next interval:
    a writer that wrote them at once would, under steady load, commit a
    few rows at a time with hardly a pause, competing with the requests."""
    sink = SlowSink()
    writer = UsageWriter(sink, interval=0.25)
    stop = threading.Event()

    def requests() -> None:
        while not stop.is_set():
            writer.record("some-key", "GET", "/", 200, None)
            stop.wait(0.0005)

    client = threading.Thread(target=requests)
    client.start()
    stop.wait(1.5)
    stop.set()
    client.join()
    writes_under_load = sink.writes
    writer.close()
    assert sink.requests == writer.written > 0
    # About six intervals: a writer that drains as rows come writes
    # every 10 ms, over a hundred times.
    assert writes_under_load <= 12, writes_under_load


def test_close_is_safe_twice_and_later_rows_are_counted_as_dropped(
    sqlite_store: SQLAlchemyKeyStore, key: IssuedKey
) -> None:
    writer = UsageWriter(sqlite_store)
    writer.record(key.id, "GET", "/", 200, None)
    writer.close()
    writer.close()
    writer.record(key.id, "GET", "/late", 200, None)
    writer.flush()
    assert writer.dropped == 1
    assert requests_logged(sqlite_store, key.id) == 1


def test_a_request_that_saw_the_writer_open_as_it_closed_is_counted_as_dropped(
    sqlite_store: SQLAlchemyKeyStore, key: IssuedKey
) -> None:
    """An accepted request checks that the writer runs, then appends itself
    without a lock: one that checked just before close() and appends just
    after it ends counted, not lost."""
    writer = UsageWriter(sqlite_store)
    writer.record(key.id, "GET", "/", 200, None)
    writer.record(key.id, "GET", "/", 200, None)
    writer.close()
    writer._lane_open = True  # what that request saw
    writer.record(key.id, "GET", "/late", 200, None)
    assert (writer.written, writer.dropped, writer.pending) == (2, 1, 0)
    assert requests_logged(sqlite_store, key.id) == 2


def test_a_close_while_the_writer_starts_leaves_the_lane_shut(
    sqlite_store: SQLAlchemyKeyStore, key: IssuedKey, monkeypatch: pytest.MonkeyPatch
) -> None:
    """close() running while the first request starts the writer's thread
    must not find the lane opened behind it: later requests are dropped
    and counted at once, not left waiting in it."""
    writer = UsageWriter(sqlite_store, interval=3600)
    start = threading.Thread.start
    closer = threading.Thread(target=writer.close)

    def start_then_close(thread: threading.Thread) -> None:
        if thread.name == "apikey-usage-writer" and not closer.is_alive():
            closer.start()
            closer.join(0.3)  # close() runs now, or waits for the start to finish
        start(thread)

    monkeypatch.setattr(threading.Thread, "start", start_then_close)
    writer.record(key.id, "GET", "/", 200, None)
    closer.join()
    monkeypatch.undo()
    for _ in range(100):
        writer.record(key.id, "GET", "/after", 200, None)
    assert writer._lane == []
    assert writer.written + writer.dropped == 101


def test_long_status_lines_do_not_wait_in_the_lane(
    sqlite_store: SQLAlchemyKeyStore, key: IssuedKey
) -> None:
    """An app that builds a long status line per response: the lane holds
    no line longer than a short one, so the lines are not kept."""
    writer = UsageWriter(
        sqlite_store, max_pending_bytes=1_000_000, interval=3600, batch_size=100_000
    )
    writer.record(key.id, "GET", "/", 200, None)  # starts the writer
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for n in range(2_000):
            writer.record(key.id, "GET", "/", f"200 {n} " + "x" * 100_000, None)
        peak = tracemalloc.get_traced_memory()[1] - before
    finally:
        tracemalloc.stop()
    assert peak < 2_000_000, peak
    writer.close()
    assert [(row.status, row.requests) for row in sqlite_store.usage(key.id)] == [(200, 2_001)]


def test_the_lane_is_counted_a_chunk_at_a_time(
    sqlite_store: SQLAlchemyKeyStore, key: IssuedKey
) -> None:
    """Counting a full lane of new rows takes tens of milliseconds: a
    request that needs the buffer's lock (a refused one) waits for one
    chunk of it, not for all of it."""
    writer = UsageWriter(sqlite_store, interval=3600, batch_size=100_000)
    writer.record(key.id, "GET", "/", 200, None)  # starts the writer
    for n in range(3_000):
        writer.record(key.id, "GET", f"/{n}", 200, None)
    waiting: list[int] = []

    class Watched:
        """The state lock, noting how many requests wait in the lane each
        time it is taken."""

        def __init__(self, lock: threading.Lock) -> None:
            self.lock = lock

        def __enter__(self) -> None:
            self.lock.acquire()
            waiting.append(len(writer._lane))

        def __exit__(self, *exc: object) -> None:
            self.lock.release()

    writer._state_lock = Watched(writer._state_lock)  # type: ignore[assignment]
    assert writer.pending == 3_001
    taken = [a - b for a, b in itertools.pairwise(waiting) if a > b]
    assert len(taken) >= 3_000 // DRAIN_CHUNK
    assert max(taken) <= DRAIN_CHUNK
    writer.close()
    assert requests_logged(sqlite_store, key.id) == 3_001


def test_buffer_is_bounded_and_drops_are_counted_and_reported(
    sqlite_store: SQLAlchemyKeyStore, key: IssuedKey, caplog: pytest.LogCaptureFixture
) -> None:
    # The writer's thread wakes only after an hour or 100 rows: not meanwhile.
    writer = UsageWriter(sqlite_store, max_pending=5, interval=3600, batch_size=100)
    for number in range(8):
        writer.record(key.id, "GET", f"/{number}", 200, None)
    assert writer.dropped == 3
    with caplog.at_level(logging.WARNING, logger="apikey_middleware"):
        writer.flush()
    assert "3 rows dropped" in caplog.text
    assert requests_logged(sqlite_store, key.id) == 5


def test_identical_requests_are_one_buffered_row(
    sqlite_store: SQLAlchemyKeyStore, key: IssuedKey
) -> None:
    """One client calling one endpoint takes one row of the buffer, however
    often it calls: none of its requests is dropped, none wakes the writer
    early, and the row says how many they were, from the first."""
    writer = UsageWriter(sqlite_store, max_pending=2, batch_size=2, interval=3600)
    before = datetime.now(UTC).replace(microsecond=0)
    for _ in range(10_000):
        writer.record(key.id, "GET", "/same", 200, "192.0.2.1")
    writer.record(key.id, "GET", "/same", 200, "192.0.2.1", accepted=False)
    assert (writer.pending, writer.dropped) == (10_001, 0)
    threading.Event().wait(0.2)
    assert writer.written == 0
    writer.close()
    rows = sqlite_store.usage(key.id)
    assert sum(row.requests for row in rows) == 10_001
    assert len(rows) <= 2  # a minute may turn while recording
    assert min(row.occurred_at for row in rows) >= before
    record = sqlite_store.get_key(key.id)
    assert record is not None
    assert record.last_used_at is not None
    assert record.last_used_at >= max(row.occurred_at for row in rows)


class FlakyStore(SQLAlchemyKeyStore):
    """A real store whose usage writes fail while ``down`` is set."""

    down = True

    def record_usage(self, records: Sequence[UsageRecord], **options: t.Any) -> None:
        if self.down:
            raise sa.exc.OperationalError("INSERT", {}, Exception("database is down"))
        super().record_usage(records, **options)


def test_failed_writes_are_retried_and_never_raise(
    sqlite_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    store = FlakyStore(sqlite_url, bcrypt_rounds=TEST_ROUNDS)
    store.create_schema()
    issued = store.create_key("n")
    guarded = ApiKeyMiddleware(RecordingApp(), store)
    client = Client(guarded)
    with caplog.at_level(logging.ERROR, logger="apikey_middleware"):
        for _ in range(3):
            assert client.get("/", headers=bearer(issued.key)).status_code == 200
        guarded.flush()
    assert "could not write 3 usage rows, will retry: OperationalError: database is down" in (
        caplog.text
    )
    assert issued.key not in caplog.text
    store.down = False
    guarded.close()
    assert requests_logged(store, issued.id) == 3
    assert guarded.usage is not None
    assert guarded.usage.dropped == 0
    store.close()


def test_bad_writer_settings_are_refused(sqlite_store: SQLAlchemyKeyStore) -> None:
    settings: list[dict[str, t.Any]] = [
        {"max_pending": 0},
        {"batch_size": -1},
        {"interval": 0},
        {"retention": timedelta(0)},
        {"retention": 90},
    ]
    for options in settings:
        with pytest.raises(ValueError, match="must be"):
            UsageWriter(sqlite_store, **options)


def test_buffered_rows_are_written_at_interpreter_exit(
    sqlite_url: str, store_factory: StoreFactory
) -> None:
    import subprocess
    import sys

    store = store_factory(sqlite_url)
    issued = store.create_key("n")
    program = f"""
from werkzeug.middleware.dispatcher import DispatcherMiddleware
from werkzeug.test import Client, create_environ, run_wsgi_app
from apikey_middleware import ApiKeyMiddleware, SQLAlchemyKeyStore
from apikey_middleware.usage import UsageWriter

def app(environ, start_response):
    start_response("200 OK", [])
    return [b""]

store = SQLAlchemyKeyStore({sqlite_url!r}, bcrypt_rounds=4)
writer = UsageWriter(store, interval=3600)
client = Client(ApiKeyMiddleware(app, store, usage_writer=writer))
for _ in range(3):
    client.get("/exit", headers={{"Authorization": "Bearer {issued.key}"}})
"""
    subprocess.run([sys.executable, "-c", program], check=True, timeout=60)  # noqa: S603
    assert {row.path for row in store.usage(issued.id)} == {"/exit"}
    assert requests_logged(store, issued.id) == 3
    store.close()


def test_rows_are_cut_when_recorded_and_the_buffer_is_bounded_in_bytes(
    sqlite_store: SQLAlchemyKeyStore, key: IssuedKey
) -> None:
    # Nothing is written meanwhile: the thread wakes after an hour or a
    # batch larger than the buffer can hold.
    writer = UsageWriter(
        sqlite_store, max_pending_bytes=1_000_000, interval=3600, batch_size=100_000
    )
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for n in range(5_000):
            writer.record(key.id, "X" * 5_000, f"/{n}" + "p" * 20_000, 200, "a" * 5_000)
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert writer.pending_bytes <= 1_000_000
    assert writer.dropped == 5_000 - writer.pending
    assert writer.pending > 500
    assert grown < 3_000_000, grown
    writer.flush()
    row = sqlite_store.usage(key.id, limit=1)[0]
    assert (len(row.method), len(row.path), len(row.remote_addr or "")) == (16, 1000, 64)


def test_only_accepted_requests_move_last_used_at(
    sqlite_store: SQLAlchemyKeyStore, key: IssuedKey
) -> None:
    guarded = ApiKeyMiddleware(RecordingApp(), sqlite_store, rules=[("GET", "/admin", "admin")])
    client = Client(guarded)
    revoked = sqlite_store.create_key("gone")
    sqlite_store.revoke(revoked.id)
    client.get("/", headers=bearer(generate_key("test", key.id).key))  # a forged secret: 401
    client.get("/admin", headers=bearer(key.key))  # valid, lacks the scope: 403
    client.get("/", headers=bearer(revoked.key))  # revoked: 401
    guarded.flush()
    assert sorted(row.status for row in sqlite_store.usage(key.id)) == [401, 403]
    assert [row.status for row in sqlite_store.usage(revoked.id)] == [401]
    assert sqlite_store.get_key(key.id).last_used_at is None  # type: ignore[union-attr]
    assert sqlite_store.get_key(revoked.id).last_used_at is None  # type: ignore[union-attr]
    client.get("/", headers=bearer(key.key))
    guarded.close()
    record = sqlite_store.get_key(key.id)
    assert record is not None
    assert record.last_used_at is not None
    assert record.last_used_at == sqlite_store.usage(key.id, limit=1)[0].occurred_at


def test_the_byte_bound_holds_for_paths_of_any_characters(
    sqlite_store: SQLAlchemyKeyStore, key: IssuedKey
) -> None:
    # Nothing is written meanwhile: the thread wakes after an hour or a
    # batch larger than the buffer can hold.
    writer = UsageWriter(
        sqlite_store, max_pending_bytes=1_000_000, interval=3600, batch_size=100_000
    )
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for n in range(3_000):
            writer.record(key.id, "GET", f"/{n}" + "\U0001f600" * 1_000, 200, None)
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert writer.pending_bytes <= 1_000_000
    assert grown < 1_500_000, grown
    writer.close()


def test_requests_waiting_to_be_counted_are_bounded_too(
    sqlite_store: SQLAlchemyKeyStore, key: IssuedKey
) -> None:
    """Accepted requests wait, uncounted and without a lock, for the
    writer's turn: no more than the byte bound allows again, and each one
    still ends written or dropped."""
    writer = UsageWriter(
        sqlite_store, max_pending_bytes=1_000_000, interval=3600, batch_size=100_000
    )
    writer.record(key.id, "GET", "/first", 200, None)  # starts the writer
    sent = 1
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for n in range(20_000):
            # Short paths, each new: the most a waiting request can take.
            writer.record(key.id, "GET", f"/{n:05}" + "\U0001f600" * 250, 200, "a" * 64)
            sent += 1
        peak = tracemalloc.get_traced_memory()[1] - before
    finally:
        tracemalloc.stop()
    assert peak < 3_000_000, peak
    assert writer.dropped + writer.pending == sent
    writer.close()
    assert writer.written + writer.dropped == sent
    assert requests_logged(sqlite_store, key.id) == writer.written


def test_paths_are_stored_as_on_the_wire_with_keys_masked(
    sqlite_store: SQLAlchemyKeyStore, key: IssuedKey
) -> None:
    guarded = ApiKeyMiddleware(RecordingApp(), sqlite_store)
    client = Client(guarded)
    for path in (f"/echo/{key.key}", "/caf\u00e9/\U0001f600", "/a b/100%25"):
        client.get(path, headers=bearer(key.key))
    guarded.close()
    stored = {row.path for row in sqlite_store.usage(key.id)}
    assert stored == {
        "/echo/(an API key, not shown)",
        "/caf%C3%A9/%F0%9F%98%80",
        "/a%20b/100%25",
    }
    assert all(path.isascii() and path.isprintable() for path in stored)


def test_a_key_cut_in_two_a_bare_secret_or_a_key_as_address_is_masked(
    sqlite_store: SQLAlchemyKeyStore, key: IssuedKey
) -> None:
    """What a client may put where the log looks: halves of a key split by
    a slash, the secret without its prefix, a key in a forwarded address."""
    secret = key.key.rsplit("_", 1)[1]
    writer = UsageWriter(sqlite_store, interval=3600)
    writer.record(key.id, "GET", f"/zz5/{key.key[:30]}/{key.key[30:]}", 200, "10.0.0.1")
    writer.record(key.id, "GET", f"/zz8/{secret}", 200, "10.0.0.1")
    writer.record(key.id, "GET", "/x", 200, key.key)
    writer.record(key.id, "GET", "/y", 200, secret)
    writer.close()
    stored = {(row.path, row.remote_addr) for row in sqlite_store.usage(key.id)}
    assert stored == {
        ("/zz5/(an API key, not shown)/(an API key, not shown)", "10.0.0.1"),
        ("/zz8/(an API key, not shown)", "10.0.0.1"),
        ("/x", "(an API key, not shown)"[:MAX_ADDRESS_LENGTH]),
        ("/y", "(an API key, not shown)"[:MAX_ADDRESS_LENGTH]),
    }
    # A key without its prefix whose secret happens to hold no digit.
    digitless = f"{key.id}_{'AbCdEfGhIjKlMnOpQrStUvWxYzAbCdEfGh'}"
    assert redact_secrets(f"/k/{digitless}") == "/k/(an API key, not shown)"
    # Ids, words and UUIDs in paths stay readable.
    for path in (f"/keys/{key.id}", "/v1/clients/550e8400-e29b-41d4-a716-446655440000",
                 "/reports/annual-summary-2026"):  # fmt: skip
        assert redact_secrets(path) == path
    # The log's broader mask is not the check that refuses input: a name
    # like this is no key.
    assert not holds_key("BillingServer2026Primary")
    assert sqlite_store.create_key("BillingServer2026Primary").record.name == (
        "BillingServer2026Primary"
    )


def test_a_row_the_database_refuses_is_dropped_alone(
    database_url: str, store_factory: StoreFactory, caplog: pytest.LogCaptureFixture
) -> None:
    if database_url.startswith("sqlite"):
        pytest.skip("SQLite stores any integer in any column: nothing is refused")
    store = store_factory(database_url)
    issued = store.create_key("n")
    writer = UsageWriter(store, interval=3600, batch_size=100_000)
    for status in (200, 201, 70_000, 202, 203):  # 70000 does not fit a SMALLINT
        writer.record(issued.id, "GET", "/", status, None)
    with caplog.at_level(logging.ERROR, logger="apikey_middleware"):
        writer.flush()
    assert sorted(row.status for row in store.usage(issued.id)) == [200, 201, 202, 203]
    assert writer.dropped == 1
    assert writer.pending == 0
    assert "dropped a usage row the database refused" in caplog.text
    writer.close()


def test_refused_requests_to_many_paths_cannot_flood_a_keys_log(
    middleware: ApiKeyMiddleware, sqlite_store: SQLAlchemyKeyStore, key: IssuedKey
) -> None:
    """Key ids are public: a client without the secret sends requests for
    one to a new path each time. They are all counted, in a bounded number
    of rows; the owner's own requests keep their paths."""
    client = Client(middleware)
    remote = {"REMOTE_ADDR": "203.0.113.9"}
    for number in range(300):
        client.get(f"/p/{number}", headers=bearer(generate_key("test", key.id).key),
                   environ_base=remote)  # fmt: skip
    for number in range(30):
        client.get(f"/mine/{number}", headers=bearer(key.key), environ_base=remote)
    middleware.flush()
    rows = sqlite_store.usage(key.id)
    refused = [row for row in rows if row.status != 200]
    assert sum(row.requests for row in refused) == 300
    assert ("*", "*") in {(row.method, row.path) for row in refused}
    # Per minute (the requests may straddle two): the first paths, then "*"
    # rows, one per status (401, then 429 once the address is throttled).
    minutes = len({row.occurred_at.replace(second=0, microsecond=0) for row in refused})
    assert len(refused) <= (REFUSED_TARGETS + 2) * minutes
    accepted = [row for row in rows if row.status == 200]
    assert sorted(row.path for row in accepted) == sorted(f"/mine/{n}" for n in range(30))


def test_refused_requests_from_ever_new_addresses_cannot_flood_a_keys_log(
    sqlite_store: SQLAlchemyKeyStore, key: IssuedKey
) -> None:
    """A client that varies its address (a trusted X-Forwarded-For, an IPv6
    /64) as well as its path still leaves a bounded number of rows."""
    writer = UsageWriter(sqlite_store, interval=3600)
    for number in range(500):
        writer.record(key.id, "GET", f"/p/{number}", 401, f"2001:db8::{number:x}", False)
    writer.close()
    rows = sqlite_store.usage(key.id)
    assert sum(row.requests for row in rows) == 500
    minutes = len({row.occurred_at.replace(second=0, microsecond=0) for row in rows})
    # The first paths and addresses as they were, then "*" for either.
    assert len(rows) <= (2 * REFUSED_TARGETS + 1) * minutes
    assert ("*", "*", "*") in {(row.method, row.path, row.remote_addr) for row in rows}


def test_what_refused_requests_leave_in_memory_is_bounded(sqlite_store: SQLAlchemyKeyStore) -> None:
    """The refused-path memory sits outside the buffer's bounds: long paths
    for many public key ids, the buffer full, must not grow it much."""
    writer = UsageWriter(sqlite_store, max_pending=10, interval=3600)
    ids = [generate_key("test").key_id for _ in range(2_000)]
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for number in range(25):
            for key_id in ids:
                path = f"/{number}/" + "p" * 998
                writer.record(key_id, "GET", path, 401, "203.0.113.9", accepted=False)
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert writer.pending == 10
    assert grown < 10_000_000, grown  # 2,000 keys x 20 paths of 1 KB would be 40 MB
    writer.close()


def test_a_value_no_database_can_store_does_not_stop_the_log(
    sqlite_store: SQLAlchemyKeyStore, key: IssuedKey, caplog: pytest.LogCaptureFixture
) -> None:
    """A lone surrogate or a control character is stored percent-encoded,
    and a status no column holds is dropped alone: neither is retried for
    ever in front of every later row."""
    writer = UsageWriter(sqlite_store, interval=3600)
    writer.record(key.id, "G\udcffT", "/odd-method", 200, "192.0.2.1\udcff\x00")
    writer.record(key.id, "GET", "/huge-status", 2**64, None)
    for _ in range(10):
        writer.record(key.id, "GET", "/after", 200, None)
    caplog.set_level(logging.ERROR, logger="apikey_middleware")
    writer.close()
    assert (writer.written, writer.dropped) == (11, 1)
    assert "dropped a usage row the database refused" in caplog.text
    rows = {row.path: row for row in sqlite_store.usage(key.id)}
    assert set(rows) == {"/odd-method", "/after"}
    assert rows["/after"].requests == 10
    assert (rows["/odd-method"].method, rows["/odd-method"].remote_addr) == (
        "G%ED%B3%BFT",
        "192.0.2.1%ED%B3%BF%00",
    )


def test_close_retries_a_write_whose_answer_was_lost_and_counts_it_once(
    sqlite_store: SQLAlchemyKeyStore, key: IssuedKey
) -> None:
    """At close, a first write fails before its commit and a second
    commits but its answer is lost: the rows are stored once and counted
    as written, not as lost."""
    attempts = []

    class Unlucky:
        def record_usage(self, records: Sequence[UsageRecord], **options: t.Any) -> None:
            attempts.append(len(records))
            if len(attempts) == 1:
                raise sa.exc.OperationalError("INSERT", {}, ConnectionError("closed"))
            sqlite_store.record_usage(records, **options)
            if len(attempts) == 2:
                raise sa.exc.OperationalError("COMMIT", {}, ConnectionError("answer lost"))

    writer = UsageWriter(Unlucky(), interval=3600)
    for number in range(1000):
        writer.record(key.id, "GET", f"/{number}", 200, None)
    writer.close()
    assert len(attempts) == 3
    assert (writer.written, writer.dropped) == (1000, 0)
    assert requests_logged(sqlite_store, key.id) == 1000


def test_rows_that_cannot_be_written_by_close_are_counted_as_dropped(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Every recorded row ends written or dropped: rows a failing database
    kept back are not left uncounted when the writer closes."""

    class Away:
        def record_usage(self, records: Sequence[UsageRecord], **options: t.Any) -> None:
            raise sa.exc.OperationalError("INSERT", {}, ConnectionError("database away"))

    writer = UsageWriter(Away(), batch_size=100, interval=0.05)
    for number in range(1000):
        writer.record("some-key", "GET", f"/path/{number}", 200, None)
    caplog.set_level(logging.ERROR, logger="apikey_middleware")
    writer.close()
    assert writer.written + writer.dropped == 1000
    assert writer.pending == 0
    assert writer.pending_bytes == 0
    assert "1000 rows it could not write" in caplog.text
