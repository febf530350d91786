"""Failed-attempt throttling: 429 after too many invalid keys from one address."""

from __future__ import annotations

import threading
import typing as t

import bcrypt
import pytest
from werkzeug.test import Client

from apikey_middleware import (
    ApiKeyMiddleware,
    FailureThrottle,
    IssuedKey,
    SQLAlchemyKeyStore,
    TooManyRequestsError,
)
from apikey_middleware.keys import generate_key

from .conftest import INVALID, RecordingApp, Statements, StoreFactory, bearer, make_app

TOO_MANY = {
    "success": False,
    "error": {
        "code": "TOO_MANY_REQUESTS",
        "message": "Too many failed authentication attempts, please retry later",
    },
}
ATTACKER = {"REMOTE_ADDR": "203.0.113.7"}
CLIENT = {"REMOTE_ADDR": "198.51.100.2"}


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def key(sqlite_store: SQLAlchemyKeyStore) -> IssuedKey:
    return sqlite_store.create_key("n", scopes=["clients:read"])


@pytest.fixture
def app() -> RecordingApp:
    return RecordingApp()


@pytest.fixture
def client(sqlite_url: str, app: RecordingApp, clock: Clock, store_factory: StoreFactory) -> Client:
    # Immediate mode: every key is read, so reads can be counted.
    store = store_factory(sqlite_url, revocation="immediate")
    throttle = FailureThrottle(3, 60, clock=clock)
    return Client(ApiKeyMiddleware(app, store, throttle=throttle, log_usage=False))


def guess(client: Client, key: IssuedKey, environ: dict[str, str]) -> t.Any:
    return client.get("/", headers=bearer(generate_key("test", key.id).key), environ_base=environ)


def test_past_the_limit_invalid_keys_get_429_and_valid_ones_pass(
    client: Client,
    key: IssuedKey,
    app: RecordingApp,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for _ in range(3):
        assert guess(client, key, ATTACKER).json == INVALID
    checks: list[bytes] = []
    monkeypatch.setattr(bcrypt, "checkpw", lambda password, hashed: checks.append(password))
    guarded = t.cast(ApiKeyMiddleware, client.application)
    queries = Statements(t.cast(SQLAlchemyKeyStore, guarded.store))
    for token in ("garbage", key.key[:-1] + "?", key.key.upper()):
        response = client.get("/", headers=bearer(token), environ_base=ATTACKER)
        assert_too_many(response, token, "60")
    assert queries.seen == []  # what cannot be a key costs no database work
    wrong = generate_key("test", key.id).key
    assert_too_many(client.get("/", headers=bearer(wrong), environ_base=ATTACKER), wrong, "60")
    assert queries.key_reads == 1
    assert checks == []  # and a wrong secret no bcrypt
    assert app.environs == []
    monkeypatch.undo()
    response = client.get("/", headers=bearer(key.key), environ_base=ATTACKER)
    assert response.status_code == 200
    assert len(app.environs) == 1


def assert_too_many(response: t.Any, token: str, retry_after: str) -> None:
    assert response.status_code == 429
    assert response.json == TOO_MANY
    assert response.headers["Retry-After"] == retry_after
    assert response.headers["Content-Type"] == "application/json"
    assert response.headers["Cache-Control"] == "no-store"
    assert token not in response.get_data(as_text=True)


def test_a_valid_key_new_to_the_process_is_not_shut_out_behind_a_busy_address(
    sqlite_url: str,
    key: IssuedKey,
    clock: Clock,
    store_factory: StoreFactory,
) -> None:
    throttle = FailureThrottle(3, 60, clock=clock)
    shared = {"REMOTE_ADDR": "192.0.2.50"}  # one NAT: an attacker and a customer
    first = Client(
        ApiKeyMiddleware(RecordingApp(), SQLAlchemyKeyStore(sqlite_url), throttle=throttle)
    )
    for _ in range(10):
        guess(first, key, shared)
    # A process that has never verified the key, sharing the same count.
    fresh = store_factory(sqlite_url, bcrypt_rounds=4, schema=False)
    other = Client(ApiKeyMiddleware(RecordingApp(), fresh, throttle=throttle, log_usage=False))
    assert other.get("/", headers=bearer(key.key), environ_base=shared).status_code == 200
    assert guess(other, key, shared).status_code == 429


def test_concurrent_guesses_count_as_they_arrive(
    sqlite_store: SQLAlchemyKeyStore, key: IssuedKey, clock: Clock
) -> None:
    arrived = threading.Barrier(20, timeout=10)

    class AllAtOnce(ApiKeyMiddleware):
        def authenticate(self, environ: t.Any) -> t.Any:
            arrived.wait()  # every guess is in flight before any is judged
            return super().authenticate(environ)

    guarded = AllAtOnce(
        RecordingApp(), sqlite_store, throttle=FailureThrottle(5, 60, clock=clock), log_usage=False
    )
    statuses: list[int] = []

    def one_guess() -> None:
        statuses.append(guess(Client(guarded), key, ATTACKER).status_code)

    threads = [threading.Thread(target=one_guess) for _ in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(statuses) == [401] * 5 + [429] * 15


def test_a_valid_key_from_another_address_is_never_throttled(
    client: Client, key: IssuedKey, app: RecordingApp
) -> None:
    for _ in range(10):
        guess(client, key, ATTACKER)
        response = client.get("/", headers=bearer(key.key), environ_base=CLIENT)
        assert response.status_code == 200
    assert len(app.environs) == 10


def test_the_window_ends_and_the_count_starts_again(
    client: Client, key: IssuedKey, clock: Clock
) -> None:
    for _ in range(3):
        guess(client, key, ATTACKER)
    clock.now += 59.5
    response = guess(client, key, ATTACKER)
    assert response.status_code == 429
    assert response.headers["Retry-After"] == "1"
    assert client.get("/", headers=bearer(key.key), environ_base=ATTACKER).status_code == 200
    clock.now += 0.5
    assert client.get("/", headers=bearer(key.key), environ_base=ATTACKER).status_code == 200
    # A fresh window: three more failures are allowed, the fourth attempt is not.
    for _ in range(3):
        assert guess(client, key, ATTACKER).status_code == 401
    assert guess(client, key, ATTACKER).status_code == 429


def test_failures_spread_over_windows_never_trip_it(
    client: Client, key: IssuedKey, clock: Clock
) -> None:
    for _ in range(5):
        for _ in range(2):
            assert guess(client, key, ATTACKER).status_code == 401
        clock.now += 61


def test_missing_keys_and_missing_scopes_do_not_count(
    sqlite_store: SQLAlchemyKeyStore, app: RecordingApp, key: IssuedKey, clock: Clock
) -> None:
    guarded = ApiKeyMiddleware(
        app,
        sqlite_store,
        rules=[("GET", "/admin", "admin")],
        throttle=FailureThrottle(1, 60, clock=clock),
        log_usage=False,
    )
    client = Client(guarded)
    for _ in range(5):
        assert client.get("/", environ_base=ATTACKER).status_code == 401
        assert client.get("/admin", headers=bearer(key.key), environ_base=ATTACKER).status_code == (
            403
        )
    assert client.get("/", headers=bearer(key.key), environ_base=ATTACKER).status_code == 200
    assert client.get("/", headers=bearer("nonsense"), environ_base=ATTACKER).status_code == 401
    assert client.get("/", headers=bearer("nonsense"), environ_base=ATTACKER).status_code == 429
    assert client.get("/", headers=bearer(key.key), environ_base=ATTACKER).status_code == 200


def test_public_paths_stay_open_to_a_throttled_address(
    sqlite_store: SQLAlchemyKeyStore, app: RecordingApp, key: IssuedKey
) -> None:
    guarded = ApiKeyMiddleware(
        app, sqlite_store, public=["/health"], throttle=FailureThrottle(1), log_usage=False
    )
    client = Client(guarded)
    guess(client, key, ATTACKER)
    assert guess(client, key, ATTACKER).status_code == 429
    assert client.get("/health", environ_base=ATTACKER).status_code == 200


def test_optional_mode_hands_the_429_to_the_app(
    sqlite_store: SQLAlchemyKeyStore, app: RecordingApp, key: IssuedKey
) -> None:
    guarded = ApiKeyMiddleware(
        app, sqlite_store, required=False, throttle=FailureThrottle(1), log_usage=False
    )
    client = Client(guarded)
    guess(client, key, ATTACKER)
    assert guess(client, key, ATTACKER).status_code == 200
    error = app.last["apikey.error"]
    assert isinstance(error, TooManyRequestsError)
    assert error.status == 429
    assert "apikey.principal" not in app.last
    client.get("/", headers=bearer(key.key), environ_base=ATTACKER)
    assert app.last["apikey.principal"].key_id == key.id


def test_flask_settings_turn_it_on_for_decorated_views(sqlite_store: SQLAlchemyKeyStore) -> None:
    flask_app = make_app(sqlite_store, APIKEY_THROTTLE_LIMIT=2, APIKEY_THROTTLE_WINDOW=30)
    key = sqlite_store.create_key("n", scopes=["clients:read"])
    client = flask_app.test_client()
    wrong = bearer(generate_key("test", key.id).key)
    for _ in range(2):
        assert client.get("/read", headers=wrong, environ_base=ATTACKER).status_code == 401
    response = client.get("/read", headers=wrong, environ_base=ATTACKER)
    assert response.status_code == 429
    assert response.json == TOO_MANY
    assert response.headers["Retry-After"] == "30"
    assert client.get("/read", headers=bearer(key.key), environ_base=ATTACKER).status_code == 200
    assert client.get("/read", headers=bearer(key.key), environ_base=CLIENT).status_code == 200
    assert client.get("/open", headers=bearer(key.key), environ_base=ATTACKER).status_code == 200


def test_throttling_is_off_unless_asked_for(
    sqlite_store: SQLAlchemyKeyStore, app: RecordingApp, key: IssuedKey
) -> None:
    client = Client(ApiKeyMiddleware(app, sqlite_store, log_usage=False))
    for _ in range(50):
        assert guess(client, key, ATTACKER).status_code == 401
    assert client.get("/", headers=bearer(key.key), environ_base=ATTACKER).status_code == 200


def test_tracked_addresses_are_bounded(clock: Clock) -> None:
    throttle = FailureThrottle(2, 60, max_addresses=100, clock=clock)
    for number in range(100_000):
        throttle.attempt(f"10.{number >> 16}.{(number >> 8) & 255}.{number & 255}")
    assert len(throttle) == 100
    assert throttle.attempt("192.0.2.1") is None
    assert throttle.attempt("192.0.2.1") is None
    assert throttle.retry_after("192.0.2.1") == 60
    assert throttle.attempt("192.0.2.1") == 60


@pytest.mark.parametrize(
    ("limit", "window"), [(0, 60), (-1, 60), (1.5, 60), (True, 60), (5, 0), (5, -1), (5, "60")]
)
def test_bad_settings_are_refused(limit: t.Any, window: t.Any) -> None:
    with pytest.raises(ValueError, match="throttle"):
        FailureThrottle(limit, window)
