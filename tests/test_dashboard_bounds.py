"""What one account may do to the server from the dashboard: keys made at a
bounded rate (counted in the shared counters), a most of active keys, odd
query values that never cost a 500, and Revoke/Rotate done twice."""

from __future__ import annotations

import re
import typing as t

import bcrypt
import pytest
import redis
from flask import Flask, session

from apikey_middleware import CounterStorage, SQLAlchemyKeyStore
from apikey_middleware.dashboard import create_dashboard
from apikey_middleware.flask import EXTENSION_KEY, ApiKeys

from .conftest import server_url
from .test_dashboard import PREFIX, SCOPES, Browser, make_app


@pytest.fixture
def hashes(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """How many bcrypt hashes are made (each still made by bcrypt)."""
    made: list[int] = []
    real = bcrypt.hashpw

    def counting(password: bytes, salt: bytes) -> bytes:
        made.append(1)
        return real(password, salt)

    monkeypatch.setattr(bcrypt, "hashpw", counting)
    return made


def keys_of(store: SQLAlchemyKeyStore, owner: str) -> int:
    return len(store.list_keys(owner=owner, include_revoked=True))


def form_error(text: str) -> str:
    match = re.search(r'role="alert">([^<]*)<', text)
    assert match, text
    return match.group(1)


# -- how fast an account may make keys ---------------------------------------


def test_past_the_rate_no_key_is_made_and_no_bcrypt_runs(
    sqlite_store: SQLAlchemyKeyStore, hashes: list[int]
) -> None:
    alice = Browser(make_app(sqlite_store, key_rate="2/minute", max_keys=None), "alice")
    assert [alice.generate().status_code for _ in range(2)] == [201, 201]
    assert len(hashes) == 2
    refused = alice.generate()
    assert refused.status_code == 429
    assert 1 <= int(refused.headers["Retry-After"]) <= 60
    assert form_error(refused.get_data(as_text=True)) == (
        "Too many keys made in a short time: try again in 1 minute. No key was made."
    )
    assert 'value="billing"' in refused.get_data(as_text=True)  # the form, as typed
    assert len(hashes) == 2
    assert keys_of(sqlite_store, "alice") == 2


def test_rotate_counts_against_the_same_rate(
    sqlite_store: SQLAlchemyKeyStore, hashes: list[int]
) -> None:
    alice = Browser(make_app(sqlite_store, key_rate="2/hour", max_keys=None), "alice")
    first = sqlite_store.create_key("billing", owner="alice")
    hashes.clear()
    rotated = alice.post(f"/{first.id}/rotate", {"grace": "Stop the old key now"})
    assert rotated.status_code == 201
    (second,) = [r for r in sqlite_store.list_keys(owner="alice") if r.replaces == first.id]
    assert alice.generate().status_code == 201
    refused = alice.post(f"/{second.id}/rotate", {"grace": "Stop the old key now"})
    assert refused.status_code == 429
    assert "try again in" in form_error(refused.get_data(as_text=True))
    assert len(hashes) == 2
    assert sqlite_store.get_key(second.id).revoked_at is None  # type: ignore[union-attr]


def test_the_rate_is_per_account(sqlite_store: SQLAlchemyKeyStore) -> None:
    app = make_app(sqlite_store, key_rate="1/minute", max_keys=None)
    alice, bob = Browser(app, "alice"), Browser(app, "bob")
    assert alice.generate().status_code == 201
    assert alice.generate().status_code == 429
    assert bob.generate().status_code == 201


def test_the_rate_is_counted_in_redis_for_every_process(
    sqlite_store: SQLAlchemyKeyStore, redis_prefix: str
) -> None:
    # Two apps, each with its own connection, as two workers or hosts have.
    url = server_url("redis")
    storages = [CounterStorage(url, prefix=redis_prefix) for _ in range(2)]
    try:
        apps = [
            make_app(sqlite_store, key_rate="3/minute", max_keys=None, counters=storage)
            for storage in storages
        ]
        browsers = [Browser(app, "alice") for app in apps]
        statuses = [browsers[n % 2].generate().status_code for n in range(5)]
        assert statuses == [201, 201, 201, 429, 429]
        assert keys_of(sqlite_store, "alice") == 3
        assert storages[0].available
        assert storages[1].available
    finally:
        for storage in storages:
            storage.close()


def test_with_the_flask_extension_it_counts_where_rate_limits_are_counted(
    sqlite_store: SQLAlchemyKeyStore, redis_prefix: str
) -> None:
    app = Flask(__name__)
    app.secret_key = "test secret"
    app.config.update(
        APIKEY_RATE_LIMIT_STORAGE=server_url("redis"), APIKEY_RATE_LIMIT_PREFIX=redis_prefix
    )
    ApiKeys(app, store=sqlite_store)
    app.register_blueprint(
        create_dashboard(
            sqlite_store,
            current_owner=lambda: session.get("account"),
            login_url="/login",
            scopes=SCOPES,
            key_rate="1/minute",
        ),
        url_prefix=PREFIX,
    )

    @app.get("/as/<name>")
    def sign_in(name: str) -> str:
        session["account"] = name
        return "ok"

    alice = Browser(app, "alice")
    assert [alice.generate().status_code for _ in range(2)] == [201, 429]
    storage = app.extensions[EXTENSION_KEY].guard.rate_limiter.storage

    client = redis.Redis.from_url(server_url("redis"))
    try:
        assert storage.shared
        assert list(client.scan_iter(match=f"{redis_prefix}*dashboard*alice*"))
    finally:
        client.close()


# -- how many keys an account may hold ---------------------------------------


def test_past_the_most_active_keys_nothing_is_made(
    sqlite_store: SQLAlchemyKeyStore, hashes: list[int]
) -> None:
    alice = Browser(make_app(sqlite_store, key_rate=None, max_keys=2), "alice")
    assert [alice.generate().status_code for _ in range(2)] == [201, 201]
    refused = alice.generate()
    assert refused.status_code == 409
    assert form_error(refused.get_data(as_text=True)) == (
        "You have 2 active keys, the most an account may hold: revoke one you no longer use"
        " first. No key was made."
    )
    assert len(hashes) == 2
    assert keys_of(sqlite_store, "alice") == 2
    # Rotating with a grace period would hold three at once; without, two.
    key_id = sqlite_store.list_keys(owner="alice")[0].id
    assert alice.post(f"/{key_id}/rotate", {"grace": "24 hours"}).status_code == 409
    assert len(hashes) == 2
    assert alice.post(f"/{key_id}/rotate", {"grace": "Stop the old key now"}).status_code == 201
    # A revoked key frees its place.
    (one, _) = sqlite_store.list_keys(owner="alice")
    sqlite_store.revoke(one.id)
    assert alice.generate().status_code == 201


def test_expired_keys_do_not_count_against_the_most(sqlite_store: SQLAlchemyKeyStore) -> None:
    from .conftest import expire_now

    alice = Browser(make_app(sqlite_store, max_keys=1), "alice")
    assert alice.generate().status_code == 201
    expire_now(sqlite_store, sqlite_store.list_keys(owner="alice")[0].id)
    assert alice.generate().status_code == 201


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"key_rate": "1/99999999999 years"}, "key_rate"),
        ({"key_rate": "often"}, "key_rate"),
        ({"max_keys": 0}, "max_keys must be a positive integer"),
        ({"max_keys": True}, "max_keys must be a positive integer"),
    ],
)
def test_bad_bounds_are_refused_when_the_dashboard_is_made(
    sqlite_store: SQLAlchemyKeyStore, options: dict[str, t.Any], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        create_dashboard(
            sqlite_store, current_owner=lambda: None, login_url="/l", scopes=SCOPES, **options
        )


# -- odd query values --------------------------------------------------------

ODD = ["²", "١", "-1", "0", "1e3", " 2", "", "99999999999999999999999", "%00", "\x00", "1" * 5000]


@pytest.mark.parametrize("value", ODD)
def test_odd_query_values_on_every_page_never_give_a_500(
    sqlite_store: SQLAlchemyKeyStore, value: str
) -> None:
    alice = Browser(make_app(sqlite_store), "alice")
    key_id = sqlite_store.create_key("billing", owner="alice").id
    for path in ("/", "/new", f"/{key_id}/revoke", f"/{key_id}/rotate", f"/{key_id}/usage"):
        for name in ("page", "by", "revoked", "q", "next"):
            response = alice.client.get(PREFIX + path, query_string={name: value})
            assert response.status_code == 200, (path, name, value)
    # A page that is not a number is the first page.
    listed = alice.client.get(PREFIX + "/", query_string={"page": value})
    assert "billing" in listed.get_data(as_text=True)


# -- done twice --------------------------------------------------------------


def test_revoking_a_revoked_key_says_so(sqlite_store: SQLAlchemyKeyStore) -> None:
    alice = Browser(make_app(sqlite_store), "alice")
    key_id = sqlite_store.create_key("billing", owner="alice").id
    revoked_at = sqlite_store.revoke(key_id).revoked_at
    response = alice.post(f"/{key_id}/revoke", {})
    assert response.status_code == 303
    page = alice.get("/?revoked=1").get_data(as_text=True)
    assert "“billing” (sk_test_" in page
    assert "was already revoked: nothing changed." in page
    assert "Revoked “billing”" not in page
    assert sqlite_store.get_key(key_id).revoked_at == revoked_at  # type: ignore[union-attr]


def test_rotating_a_key_in_its_grace_again_makes_no_second_successor(
    sqlite_store: SQLAlchemyKeyStore, hashes: list[int]
) -> None:
    alice = Browser(make_app(sqlite_store), "alice")
    key_id = sqlite_store.create_key("billing", owner="alice").id
    hashes.clear()
    assert alice.post(f"/{key_id}/rotate", {"grace": "24 hours"}).status_code == 201
    again = alice.post(f"/{key_id}/rotate", {"grace": "24 hours"})
    assert again.status_code == 409
    (successor,) = [r for r in sqlite_store.list_keys(owner="alice") if r.replaces == key_id]
    assert form_error(again.get_data(as_text=True)) == (
        f"This key was already rotated, to {successor.prefix}: rotate that key instead."
    )
    assert len(hashes) == 1


def test_the_form_refuses_a_window_redis_cannot_keep(sqlite_store: SQLAlchemyKeyStore) -> None:
    alice = Browser(make_app(sqlite_store), "alice")
    for limit in ("1/99999999999 years", "1" + "0" * 60 + "/second"):
        response = alice.generate(rate_limit=limit)
        assert response.status_code == 400
        assert "Write a rate limit such as 100/minute" in response.get_data(as_text=True)
    assert keys_of(sqlite_store, "alice") == 0


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(1, "1 second"), (45, "45 seconds"), (60, "1 minute"), (89, "1 minute"),
     (600, "10 minutes"), (3600, "60 minutes"), (7200, "2 hours")],
)  # fmt: skip
def test_a_wait_reads_as_a_person_says_it(seconds: int, text: str) -> None:
    from apikey_middleware.dashboard._bounds import wait_text

    assert wait_text(seconds) == text


def test_concurrent_posts_make_no_more_than_the_rate(sqlite_store: SQLAlchemyKeyStore) -> None:
    import threading

    app = make_app(sqlite_store, key_rate="2/minute", max_keys=None)
    browsers = [Browser(app, "alice") for _ in range(6)]
    tokens = [browser.token() for browser in browsers]
    start = threading.Barrier(len(browsers), timeout=30)
    statuses: list[int] = []

    def post(browser: Browser, token: str) -> None:
        start.wait()
        data = {"csrf_token": token, "name": "k", "key_type": "test", "scopes": ["clients:read"]}
        statuses.append(browser.client.post(PREFIX + "/new", data=data).status_code)

    threads = [
        threading.Thread(target=post, args=pair) for pair in zip(browsers, tokens, strict=True)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(statuses) == [201, 201, 429, 429, 429, 429]
    assert keys_of(sqlite_store, "alice") == 2


def test_a_key_the_store_refuses_to_make_is_a_form_error(sqlite_url: str) -> None:
    # Keys made with one pepper; the dashboard's store has another.
    first = SQLAlchemyKeyStore(sqlite_url, bcrypt_rounds=4, pepper=b"one pepper")
    first.create_schema()
    first.create_key("made first", owner="alice")
    first.close()
    other = SQLAlchemyKeyStore(sqlite_url, bcrypt_rounds=4, pepper=b"another pepper")
    try:
        response = Browser(make_app(other), "alice").generate()
        assert response.status_code == 400
        assert form_error(response.get_data(as_text=True)) == (
            "The key could not be made with these settings."
        )
        assert keys_of(other, "alice") == 1
    finally:
        other.close()
