"""Per-key rate limits: the key's field, the 429 and the headers, on memory and on Redis."""

from __future__ import annotations

import json
import time
import typing as t
from collections.abc import Iterable, Iterator

import pytest
import redis
import sqlalchemy as sa
from click.testing import CliRunner
from werkzeug.test import Client

from apikey_middleware import (
    ApiKeyMiddleware,
    CounterStorage,
    FailureThrottle,
    RateLimitedError,
    RateLimiter,
    SQLAlchemyKeyStore,
)
from apikey_middleware.cli import main
from apikey_middleware.keys import generate_key
from apikey_middleware.ratelimit import check_rate_limit
from apikey_middleware.schema import ApiKey
from apikey_middleware.usage import UsageWriter

from .conftest import INVALID, RecordingApp, StoreFactory, bearer, make_app, server_url

if t.TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIEnvironment

RATE_LIMITED = {
    "success": False,
    "error": {"code": "RATE_LIMITED", "message": "Rate limit exceeded for this API key"},
}
HEADERS = ("X-RateLimit-Limit", "X-RateLimit-Remaining", "X-RateLimit-Reset")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(params=["memory", "redis"])
def counters(request: pytest.FixtureRequest) -> Iterator[CounterStorage]:
    """A counter storage in this process's memory, and one in Redis."""
    if request.param == "memory":
        yield CounterStorage("memory://")
        return
    prefix = request.getfixturevalue("redis_prefix")
    storage = CounterStorage(server_url("redis"), prefix=prefix)
    yield storage
    storage.close()


def guarded(
    store: SQLAlchemyKeyStore, counters: CounterStorage | str = "memory://", **options: t.Any
) -> Client:
    options.setdefault("log_usage", False)
    return Client(ApiKeyMiddleware(RecordingApp(), store, rate_limit_storage=counters, **options))


def assert_limited(response: t.Any, limit: int, retry_after: int) -> None:
    assert response.status_code == 429
    assert response.json == RATE_LIMITED
    assert response.headers["Content-Type"] == "application/json"
    assert response.headers["Cache-Control"] == "no-store"
    assert response.headers["X-RateLimit-Limit"] == str(limit)
    assert response.headers["X-RateLimit-Remaining"] == "0"
    assert 0 < int(response.headers["Retry-After"]) <= retry_after
    reset = int(response.headers["X-RateLimit-Reset"])
    assert time.time() < reset <= time.time() + retry_after + 1


# -- the key's rate limit -----------------------------------------------


@pytest.mark.parametrize(
    "value",
    ["100/minute", "10/second;1000/hour", " 5 per 2 minutes ", "1/day, 30/month", "2/1 hour"],
)
def test_rate_limits_in_the_limits_notation_are_kept(
    sqlite_store: SQLAlchemyKeyStore, value: str
) -> None:
    issued = sqlite_store.create_key("n", rate_limit=value)
    assert issued.record.rate_limit == value.strip()
    record = sqlite_store.get_key(issued.id)
    assert record is not None
    assert record.rate_limit == value.strip()


@pytest.mark.parametrize(
    "value",
    [
        pytest.param("", id="empty"),
        pytest.param("lots", id="not-notation"),
        pytest.param("10/fortnight", id="unknown-period"),
        pytest.param("0/minute", id="allows-nothing"),
        pytest.param("10/minute\x1b[2J", id="control-characters"),
        pytest.param(";".join(["1/second"] * 9), id="too-many"),
        pytest.param("1/second;" * 30 + "1/day", id="too-long"),
        pytest.param(100, id="not-a-string"),
        pytest.param("1/99999999999 years", id="period-redis-refuses"),
        pytest.param("1/2 years", id="period-over-a-year"),
        pytest.param("1/999999999999999999999999999999 second", id="period-in-seconds"),
        pytest.param("1" + "0" * 60 + "/second", id="amount-10**60"),
        pytest.param("1000000001/second", id="amount-over-a-billion"),
    ],
)
def test_bad_rate_limits_are_refused_and_nothing_is_stored(
    sqlite_store: SQLAlchemyKeyStore, value: t.Any
) -> None:
    with pytest.raises(ValueError, match="rate_limit"):
        sqlite_store.create_key("n", rate_limit=value)
    assert sqlite_store.list_keys(include_revoked=True) == []


def test_limits_up_to_a_year_and_a_billion_are_kept(sqlite_store: SQLAlchemyKeyStore) -> None:
    for text in ("1/year", "1000000000/second", "5/12 months", "1/31104000 seconds"):
        assert sqlite_store.create_key("n", rate_limit=text).record.rate_limit == text


def test_a_window_too_long_is_refused_by_update_and_the_command_line(
    sqlite_store: SQLAlchemyKeyStore,
) -> None:
    issued = sqlite_store.create_key("n", rate_limit="5/minute")
    with pytest.raises(ValueError, match="at most 1 year"):
        sqlite_store.update_key(issued.id, rate_limit="1/99999999999 years")
    runner = CliRunner()
    env = {"APIKEY_DATABASE_URL": sqlite_store.url}
    for args in (
        ["create", "--name", "p", "--rate-limit", "1/99999999999 years"],
        ["update", issued.id, "--rate-limit", "1" + "0" * 60 + "/second"],
    ):
        result = runner.invoke(main, args, env=env)
        assert result.exit_code == 2  # click's usage error, as for any bad option
        assert "Traceback" not in result.output
        (line,) = [line for line in result.output.splitlines() if line.startswith("Error:")]
        assert "--rate-limit" in line  # the option, named once by click
        assert "1 year" in line or "1,000,000,000" in line, line
    assert sqlite_store.get_key(issued.id).rate_limit == "5/minute"  # type: ignore[union-attr]
    assert len(sqlite_store.list_keys()) == 1


def test_a_rate_limit_holding_a_key_is_refused_without_repeating_it(
    sqlite_store: SQLAlchemyKeyStore,
) -> None:
    key = generate_key("live").key
    with pytest.raises(ValueError, match="rate_limit") as caught:
        sqlite_store.create_key("n", rate_limit=f"10/minute {key}")
    assert key not in str(caught.value)
    assert key[8:40] not in str(caught.value)


def test_the_rate_limit_is_listed_and_carried_by_rotation(store: SQLAlchemyKeyStore) -> None:
    issued = store.create_key("n", scopes=["a"], rate_limit="10/second;1000/hour")
    plain = store.create_key("plain")
    assert {record.id: record.rate_limit for record in store.list_keys()} == {
        issued.id: "10/second;1000/hour",
        plain.id: None,
    }
    rotated = store.rotate(issued.id)
    assert rotated.record.rate_limit == "10/second;1000/hour"
    assert rotated.record.replaces == issued.id
    assert store.authenticate(rotated.key).rate_limit == "10/second;1000/hour"


def test_check_rate_limit_passes_none_and_names_what_it_checks() -> None:
    assert check_rate_limit("limit", None) is None
    with pytest.raises(ValueError, match=r"^APIKEY_X: 'nope' is not a rate limit"):
        check_rate_limit("APIKEY_X", "nope")


# -- the answers ----------------------------------------------------------


def test_a_key_gets_its_limit_then_429_with_the_headers(
    sqlite_store: SQLAlchemyKeyStore, counters: CounterStorage
) -> None:
    issued = sqlite_store.create_key("n", rate_limit="3/minute")
    client = guarded(sqlite_store, counters)
    for remaining in (2, 1, 0):
        response = client.get("/", headers=bearer(issued.key))
        assert response.status_code == 200
        assert response.headers["X-RateLimit-Limit"] == "3"
        assert response.headers["X-RateLimit-Remaining"] == str(remaining)
        assert time.time() < int(response.headers["X-RateLimit-Reset"]) <= time.time() + 61
        assert "Retry-After" not in response.headers
    for _ in range(3):
        response = client.get("/", headers=bearer(issued.key))
        assert_limited(response, 3, 60)
        assert issued.key not in response.get_data(as_text=True)
    head = client.head("/", headers=bearer(issued.key))
    assert head.status_code == 429
    assert head.get_data() == b""
    other = sqlite_store.create_key("other", rate_limit="3/minute")
    assert client.get("/", headers=bearer(other.key)).status_code == 200


def test_the_default_applies_to_keys_without_a_limit_of_their_own(
    sqlite_store: SQLAlchemyKeyStore, counters: CounterStorage
) -> None:
    plain = sqlite_store.create_key("plain")
    own = sqlite_store.create_key("own", rate_limit="5/minute")
    unlimited = guarded(sqlite_store, counters)
    response = unlimited.get("/", headers=bearer(plain.key))
    assert response.status_code == 200
    assert not any(name in response.headers for name in HEADERS)
    client = guarded(sqlite_store, counters, default_rate_limit="2/minute")
    for _ in range(2):
        assert client.get("/", headers=bearer(plain.key)).headers["X-RateLimit-Limit"] == "2"
    assert_limited(client.get("/", headers=bearer(plain.key)), 2, 60)
    for _ in range(5):
        assert client.get("/", headers=bearer(own.key)).headers["X-RateLimit-Limit"] == "5"
    assert_limited(client.get("/", headers=bearer(own.key)), 5, 60)


def test_refused_requests_do_not_spend_the_allowance(
    sqlite_store: SQLAlchemyKeyStore, counters: CounterStorage
) -> None:
    issued = sqlite_store.create_key("n", scopes=["clients:read"], rate_limit="2/minute")
    client = guarded(sqlite_store, counters, rules=[("GET", "/admin", "admin")])
    wrong = generate_key("test", issued.id).key
    for _ in range(5):
        refused = client.get("/", headers=bearer(wrong))
        assert refused.json == INVALID
        assert not any(name in refused.headers for name in HEADERS)
        forbidden = client.get("/admin", headers=bearer(issued.key))
        assert forbidden.status_code == 403
        # Where the key stands, read and not spent (SPEC 8: every response).
        assert forbidden.headers["X-RateLimit-Limit"] == "2"
        assert forbidden.headers["X-RateLimit-Remaining"] == "2"
    assert client.get("/", headers=bearer(issued.key)).headers["X-RateLimit-Remaining"] == "1"
    after = client.get("/admin", headers=bearer(issued.key))
    assert after.status_code == 403
    assert after.headers["X-RateLimit-Remaining"] == "1"
    assert abs(int(after.headers["X-RateLimit-Reset"]) - time.time() - 60) < 10
    assert client.get("/", headers=bearer(issued.key)).headers["X-RateLimit-Remaining"] == "0"
    assert client.get("/", headers=bearer(issued.key)).status_code == 429


def test_every_limit_must_allow_and_the_tightest_is_in_the_headers(
    sqlite_store: SQLAlchemyKeyStore, counters: CounterStorage
) -> None:
    issued = sqlite_store.create_key("n", rate_limit="3/hour;20/day")
    client = guarded(sqlite_store, counters)
    limits = [client.get("/", headers=bearer(issued.key)).headers for _ in range(3)]
    assert [(h["X-RateLimit-Limit"], h["X-RateLimit-Remaining"]) for h in limits] == [
        ("3", "2"),
        ("3", "1"),
        ("3", "0"),
    ]
    assert_limited(client.get("/", headers=bearer(issued.key)), 3, 3600)


def test_the_window_ends_and_the_key_is_served_again(sqlite_store: SQLAlchemyKeyStore) -> None:
    clock = Clock()
    issued = sqlite_store.create_key("n", rate_limit="2/minute")
    client = guarded(sqlite_store, CounterStorage("memory://", clock=clock))
    for _ in range(2):
        assert client.get("/", headers=bearer(issued.key)).status_code == 200
    clock.now += 59.5
    refused = client.get("/", headers=bearer(issued.key))
    assert refused.status_code == 429
    assert refused.headers["Retry-After"] == "1"
    clock.now += 0.5
    response = client.get("/", headers=bearer(issued.key))
    assert response.status_code == 200
    assert response.headers["X-RateLimit-Remaining"] == "1"


def test_a_limit_changed_in_the_database_holds_from_the_next_request(
    sqlite_store: SQLAlchemyKeyStore, store_factory: StoreFactory, sqlite_url: str
) -> None:
    issued = sqlite_store.create_key("n", rate_limit="1/minute")
    server = store_factory(sqlite_url, schema=False)  # another process's store
    client = guarded(server)
    assert client.get("/", headers=bearer(issued.key)).status_code == 200
    assert client.get("/", headers=bearer(issued.key)).status_code == 429
    with sqlite_store.engine.begin() as connection:  # by hand, not through the store
        connection.execute(
            sa.update(ApiKey).where(ApiKey.id == issued.id).values(rate_limit="5/minute")
        )
    response = client.get("/", headers=bearer(issued.key))
    assert response.status_code == 200
    assert response.headers["X-RateLimit-Limit"] == "5"


def test_a_limit_written_by_hand_that_is_not_valid_gets_the_default(
    sqlite_store: SQLAlchemyKeyStore, caplog: pytest.LogCaptureFixture
) -> None:
    issued = sqlite_store.create_key("n")
    with sqlite_store.engine.begin() as connection:
        connection.execute(
            sa.update(ApiKey).where(ApiKey.id == issued.id).values(rate_limit="plenty")
        )
    client = guarded(sqlite_store, default_rate_limit="1/minute")
    assert client.get("/", headers=bearer(issued.key)).status_code == 200
    assert client.get("/", headers=bearer(issued.key)).status_code == 429
    assert "'plenty'" in caplog.text
    assert sum("is not valid" in record.message for record in caplog.records) == 1
    without_default = guarded(sqlite_store)
    response = without_default.get("/", headers=bearer(issued.key))
    assert response.status_code == 200
    assert "X-RateLimit-Limit" not in response.headers


def test_headers_the_app_sets_under_the_same_names_are_replaced(
    sqlite_store: SQLAlchemyKeyStore,
) -> None:
    def app(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        start_response("200 OK", [("X-RateLimit-Limit", "999"), ("X-Other", "kept")])
        return [b"ok"]

    issued = sqlite_store.create_key("n", rate_limit="4/minute")
    client = Client(ApiKeyMiddleware(app, sqlite_store, log_usage=False))
    response = client.get("/", headers=bearer(issued.key))
    assert response.headers.getlist("X-RateLimit-Limit") == ["4"]
    assert response.headers["X-Other"] == "kept"


def test_optional_mode_hands_the_429_to_the_app(sqlite_store: SQLAlchemyKeyStore) -> None:
    app = RecordingApp()
    issued = sqlite_store.create_key("n", rate_limit="1/minute")
    client = Client(ApiKeyMiddleware(app, sqlite_store, required=False, log_usage=False))
    assert client.get("/", headers=bearer(issued.key)).status_code == 200
    assert app.last["apikey.principal"].key_id == issued.id
    client.get("/", headers=bearer(issued.key))
    error = app.last["apikey.error"]
    assert isinstance(error, RateLimitedError)
    assert error.quota.limit == 1
    assert "apikey.principal" not in app.last


def test_the_flask_decorator_answers_as_the_middleware(sqlite_store: SQLAlchemyKeyStore) -> None:
    app = make_app(sqlite_store, APIKEY_DEFAULT_RATE_LIMIT="2/minute", APIKEY_LOG_USAGE=False)
    issued = sqlite_store.create_key("n", scopes=["clients:read"])
    client = app.test_client()
    for remaining in ("1", "0"):
        response = client.get("/read", headers=bearer(issued.key))
        assert response.status_code == 200
        assert response.headers["X-RateLimit-Remaining"] == remaining
    assert_limited(client.get("/read", headers=bearer(issued.key)), 2, 60)


def test_the_429_is_in_the_usage_log_and_does_not_move_last_used(
    sqlite_store: SQLAlchemyKeyStore,
) -> None:
    issued = sqlite_store.create_key("n", rate_limit="1/minute")
    writer = UsageWriter(sqlite_store, interval=3600)
    guarded_app = ApiKeyMiddleware(RecordingApp(), sqlite_store, usage_writer=writer)
    client = Client(guarded_app)
    client.get("/", headers=bearer(issued.key))
    client.get("/", headers=bearer(issued.key))
    guarded_app.flush()
    assert sorted(row.status for row in sqlite_store.usage(issued.id)) == [200, 429]
    guarded_app.close()


# -- shared through Redis ---------------------------------------------------


def test_two_processes_share_a_key_s_count_through_redis(
    sqlite_url: str, store_factory: StoreFactory, redis_prefix: str
) -> None:
    url = server_url("redis")
    issued = store_factory(sqlite_url).create_key("n", rate_limit="5/minute")
    clients = [
        guarded(store_factory(sqlite_url, schema=False), CounterStorage(url, prefix=redis_prefix))
        for _ in range(2)
    ]
    statuses = [clients[n % 2].get("/", headers=bearer(issued.key)).status_code for n in range(9)]
    assert statuses == [200] * 5 + [429] * 4


def test_a_request_takes_one_round_trip_whatever_its_limits(
    sqlite_store: SQLAlchemyKeyStore, redis_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    counters = CounterStorage(server_url("redis"), prefix=redis_prefix)
    issued = sqlite_store.create_key("n", rate_limit="10/second;100/minute;1000/hour")
    client = guarded(sqlite_store, counters)
    client.get("/", headers=bearer(issued.key))  # connected, script loaded
    sent: list[str] = []
    connection_class = counters._shared.client.connection_pool.connection_class  # type: ignore[union-attr]
    original = connection_class.send_packed_command

    def counted(self: t.Any, command: t.Any, check_health: bool = True) -> None:
        sent.append("send")
        original(self, command, check_health)

    monkeypatch.setattr(connection_class, "send_packed_command", counted)
    for _ in range(5):
        assert client.get("/", headers=bearer(issued.key)).status_code == 200
    assert sent == ["send"] * 5
    counters.close()


def test_failed_attempts_are_counted_across_processes_in_redis(
    sqlite_url: str, store_factory: StoreFactory, redis_prefix: str
) -> None:
    url = server_url("redis")
    issued = store_factory(sqlite_url).create_key("n")
    wrong = bearer(generate_key("test", issued.id).key)
    clients = [
        guarded(
            store_factory(sqlite_url, schema=False),
            CounterStorage(url, prefix=redis_prefix),
            throttle=FailureThrottle(3, 60),  # no storage of its own: the middleware's
        )
        for _ in range(2)
    ]
    statuses = [clients[n % 2].get("/", headers=wrong).status_code for n in range(8)]
    assert statuses == [401] * 3 + [429] * 5
    assert clients[1].get("/", headers=bearer(issued.key)).status_code == 200


def test_settings_name_a_bad_rate_limit_or_storage(sqlite_store: SQLAlchemyKeyStore) -> None:
    with pytest.raises(ValueError, match="APIKEY_DEFAULT_RATE_LIMIT"):
        make_app(sqlite_store, APIKEY_DEFAULT_RATE_LIMIT="plenty")
    with pytest.raises(ValueError, match="APIKEY_RATE_LIMIT_STORAGE") as caught:
        make_app(sqlite_store, APIKEY_RATE_LIMIT_STORAGE="memcached://user:s3cret@cache:11211")
    assert "s3cret" not in str(caught.value)
    with pytest.raises(ValueError, match="APIKEY_RATE_LIMIT_PREFIX"):
        make_app(sqlite_store, APIKEY_RATE_LIMIT_PREFIX="")
    with pytest.raises(ValueError, match="default_rate_limit"):
        ApiKeyMiddleware(RecordingApp(), sqlite_store, default_rate_limit="0/second")


def test_a_storage_url_password_is_never_shown() -> None:
    storage = CounterStorage("redis://:s3cret@127.0.0.1:1/0")
    assert "s3cret" not in repr(storage)
    storage.close()


def test_redis_keys_of_a_limit_expire_with_their_window(
    sqlite_store: SQLAlchemyKeyStore, redis_prefix: str
) -> None:
    url = server_url("redis")
    issued = sqlite_store.create_key("n", rate_limit="2/minute")
    guarded(sqlite_store, CounterStorage(url, prefix=redis_prefix)).get(
        "/", headers=bearer(issued.key)
    )
    client = redis.Redis.from_url(url)
    keys = list(client.scan_iter(match=f"{redis_prefix}*"))
    assert len(keys) == 1
    assert issued.id in keys[0].decode()
    assert 0 < client.ttl(keys[0]) <= 60
    client.close()


def test_record_json_holds_the_rate_limit(sqlite_store: SQLAlchemyKeyStore) -> None:
    from apikey_middleware.cli._common import record_json

    issued = sqlite_store.create_key("n", rate_limit="7/hour")
    shown = record_json(issued.record, issued.record.created_at)
    assert json.loads(json.dumps(shown))["rate_limit"] == "7/hour"


# -- the command line ---------------------------------------------------------


def test_create_takes_a_rate_limit_and_list_and_show_print_it(
    sqlite_store: SQLAlchemyKeyStore, sqlite_url: str
) -> None:
    runner = CliRunner()

    def run(*args: str) -> t.Any:
        return runner.invoke(main, ["--database-url", sqlite_url, *args])

    created = run("create", "--name", "n", "--rate-limit", "10/second;1000/hour")
    assert created.exit_code == 0, created.output
    assert "rate limit: 10/second;1000/hour" in created.stdout
    (record,) = sqlite_store.list_keys()
    assert record.rate_limit == "10/second;1000/hour"
    listed = run("list")
    assert "RATE LIMIT" in listed.stdout
    assert "10/second;1000/hour" in listed.stdout
    assert json.loads(run("list", "--json").stdout)[0]["rate_limit"] == "10/second;1000/hour"
    assert "rate limit: 10/second;1000/hour" in run("show", record.id).stdout
    assert json.loads(run("show", record.id, "--json").stdout)["rate_limit"] == (
        "10/second;1000/hour"
    )


@pytest.mark.parametrize("value", ["plenty", "0/minute", "10/fortnight"])
def test_create_refuses_a_bad_rate_limit_in_one_line(
    sqlite_store: SQLAlchemyKeyStore, sqlite_url: str, value: str
) -> None:
    result = CliRunner().invoke(
        main, ["--database-url", sqlite_url, "create", "--name", "n", "--rate-limit", value]
    )
    assert result.exit_code == 2
    assert "--rate-limit" in result.stderr
    assert "Traceback" not in result.output
    assert sum(line.startswith("Error") for line in result.stderr.splitlines()) == 1
    assert sqlite_store.list_keys() == []


# -- update_key ---------------------------------------------------------------


def test_update_key_changes_the_limit_for_every_process_from_the_next_request(
    store: SQLAlchemyKeyStore, store_factory: StoreFactory, database_url: str
) -> None:
    issued = store.create_key("n", scopes=["a"], rate_limit="1/minute")
    server = store_factory(database_url, schema=False)
    client = guarded(server)
    assert client.get("/", headers=bearer(issued.key)).status_code == 200
    assert client.get("/", headers=bearer(issued.key)).status_code == 429
    record = store.update_key(issued.id, rate_limit="3/minute")
    assert (record.rate_limit, record.name, record.scopes) == ("3/minute", "n", ("a",))
    response = client.get("/", headers=bearer(issued.key))
    assert response.status_code == 200
    assert response.headers["X-RateLimit-Limit"] == "3"
    assert store.update_key(issued.id, rate_limit=None).rate_limit is None
    response = client.get("/", headers=bearer(issued.key))
    assert "X-RateLimit-Limit" not in response.headers
    assert store.update_key(issued.id).rate_limit is None  # nothing given, nothing changed


def test_update_key_refuses_bad_values_unknown_ids_and_revoked_keys(
    sqlite_store: SQLAlchemyKeyStore,
) -> None:
    from apikey_middleware import KeyNotFoundError

    issued = sqlite_store.create_key("n", rate_limit="1/minute")
    with pytest.raises(ValueError, match="rate_limit"):
        sqlite_store.update_key(issued.id, rate_limit="lots")
    with pytest.raises(KeyNotFoundError):
        sqlite_store.update_key(generate_key("test").key_id, rate_limit="1/minute")
    sqlite_store.revoke(issued.id)
    with pytest.raises(ValueError, match="revoked"):
        sqlite_store.update_key(issued.id, rate_limit="5/minute")
    record = sqlite_store.get_key(issued.id)
    assert record is not None
    assert record.rate_limit == "1/minute"


def test_the_update_command_sets_and_clears_a_rate_limit(
    sqlite_store: SQLAlchemyKeyStore, sqlite_url: str
) -> None:
    issued = sqlite_store.create_key("n")
    runner = CliRunner()

    def run(*args: str) -> t.Any:
        return runner.invoke(main, ["--database-url", sqlite_url, *args])

    result = run("update", issued.id, "--rate-limit", "100/minute")
    assert result.exit_code == 0, result.output
    assert "rate limit: 100/minute" in result.stdout
    assert run("update", issued.id, "--rate-limit", "none").exit_code == 0
    record = sqlite_store.get_key(issued.id)
    assert record is not None
    assert record.rate_limit is None
    for args, code in (
        (["update", issued.id], 2),
        (["update", issued.id, "--rate-limit", "lots"], 2),
        (["update", generate_key("test").key_id, "--rate-limit", "1/minute"], 1),
    ):
        result = run(*args)
        assert result.exit_code == code, result.output
        assert "Traceback" not in result.output
        assert sum(line.startswith("Error") for line in result.stderr.splitlines()) == 1
    assert (
        issued.key not in run("update", issued.key, "--rate-limit", "1/hour").output
    )  # never echoed


def test_a_command_redis_refuses_is_that_request_s_fault_not_an_outage(
    redis_prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    url = server_url("redis")
    storage, other = (
        CounterStorage(url, prefix=redis_prefix),
        CounterStorage(url, prefix=redis_prefix),
    )
    try:
        # An expiry Redis refuses ("invalid expire time"), as a limit
        # written by hand into the database before limits were bounded.
        (count,) = storage.hit([("poison", 1e16)])
        assert count.hits == 1
        assert storage.available
        assert "refused a command" in caplog.text
        assert "unavailable" not in caplog.text
        # The next request, of another key, is counted in Redis: shared.
        storage.hit([("other", 60)])
        assert other.hit([("other", 60)])[0].hits == 2
        assert storage.get("other", 60).hits == 2
        # A read Redis refuses (a key of another type) is that read's alone.
        client = redis.Redis.from_url(url)
        try:
            client.hset(f"{redis_prefix}:wrong-type", "field", "1")
            assert storage.get("wrong-type", 60).hits == 0
        finally:
            client.close()
        assert storage.available
        assert storage.get("other", 60).hits == 2
    finally:
        storage.close()
        other.close()


def test_a_403_of_the_flask_decorator_says_where_the_key_stands(
    sqlite_store: SQLAlchemyKeyStore, counters: CounterStorage
) -> None:
    issued = sqlite_store.create_key("n", scopes=["clients:read"], rate_limit="3/minute")
    app = make_app(sqlite_store, APIKEY_LOG_USAGE=False)
    app.extensions["apikeys"].guard.rate_limiter.storage = counters
    client = app.test_client()
    assert client.get("/read", headers=bearer(issued.key)).headers["X-RateLimit-Remaining"] == "2"
    for _ in range(4):
        forbidden = client.post("/write", headers=bearer(issued.key))
        assert forbidden.status_code == 403
        assert forbidden.headers["X-RateLimit-Limit"] == "3"
        assert forbidden.headers["X-RateLimit-Remaining"] == "2"
    assert client.get("/read", headers=bearer(issued.key)).headers["X-RateLimit-Remaining"] == "1"


def test_reprs_name_the_storage_without_its_password(sqlite_store: SQLAlchemyKeyStore) -> None:
    limiter = RateLimiter(CounterStorage("memory://"), default="5/minute")
    assert repr(limiter) == "RateLimiter(CounterStorage('memory://'), default='5/minute')"
    storage = CounterStorage("redis://:s3cret@127.0.0.1:6379/7")
    try:
        assert "s3cret" not in repr(RateLimiter(storage))
        assert "s3cret" not in repr(storage)
    finally:
        storage.close()
    middleware = ApiKeyMiddleware(RecordingApp(), sqlite_store, log_usage=False)
    assert repr(middleware).startswith("ApiKeyMiddleware(")
    assert repr(sqlite_store) in repr(middleware)


def test_a_bad_rate_limit_on_the_command_line_is_named_once(
    sqlite_url: str, sqlite_store: SQLAlchemyKeyStore
) -> None:
    url = sqlite_url
    issued = sqlite_store.create_key("n")
    for args in (["create", "--name", "x"], ["update", issued.id, "--name", "y"]):
        result = CliRunner().invoke(main, ["--database-url", url, *args, "--rate-limit", "bogus"])
        assert result.exit_code == 2
        (line,) = [text for text in result.stderr.splitlines() if text.startswith("Error")]
        assert line.startswith("Error: Invalid value for '--rate-limit': 'bogus'"), line
        assert "rate limit: " not in line, "the option is named once"
