"""The Flask extension and @require_scopes, against real stores."""

from __future__ import annotations

import typing as t
from collections.abc import Iterator
from pathlib import Path

import pytest
from flask import Flask
from flask.typing import ResponseReturnValue
from werkzeug.test import Client, TestResponse

from apikey_middleware import (
    ApiKeyMiddleware,
    InvalidKeyError,
    IssuedKey,
    Principal,
    SQLAlchemyKeyStore,
)
from apikey_middleware.flask import ApiKeys, current_principal, require_scopes
from apikey_middleware.keys import generate_key

from .conftest import TEST_ROUNDS, StoreFactory, bearer, make_app, whoami


@pytest.fixture
def reader(sqlite_store: SQLAlchemyKeyStore) -> IssuedKey:
    return sqlite_store.create_key("reader", scopes=["clients:read"])


@pytest.fixture
def app(sqlite_store: SQLAlchemyKeyStore) -> Flask:
    return make_app(sqlite_store)


@pytest.fixture
def client(app: Flask) -> Client:
    return app.test_client()


@pytest.mark.parametrize("path", ["/read", "/async", "/bp/read", "/view", "/any"])
def test_decorated_views_let_a_good_key_in(client: Client, reader: IssuedKey, path: str) -> None:
    response = client.get(path, headers=bearer(reader.key))
    assert response.status_code == 200
    assert response.json == {"key_id": reader.id}


@pytest.mark.parametrize("path", ["/read", "/async", "/bp/read", "/view", "/any"])
def test_decorated_views_refuse_a_missing_key(client: Client, path: str) -> None:
    response = client.get(path)
    assert response.status_code == 401
    assert response.json == {
        "success": False,
        "error": {"code": "UNAUTHORIZED", "message": "No API key provided"},
    }


@pytest.mark.parametrize("path", ["/read", "/async", "/bp/read", "/view"])
def test_decorated_views_refuse_a_bad_key(client: Client, reader: IssuedKey, path: str) -> None:
    response = client.get(path, headers=bearer(reader.key[:-1] + "?"))
    assert response.status_code == 401
    assert response.json is not None
    assert response.json["error"]["code"] == "INVALID_API_KEY"


def test_missing_scope_is_forbidden(client: Client, reader: IssuedKey) -> None:
    response = client.post("/write", headers=bearer(reader.key))
    assert response.status_code == 403
    assert response.headers["WWW-Authenticate"] == (
        'Bearer realm="api", error="insufficient_scope", scope="clients:read clients:write"'
    )
    assert client.delete("/view", headers=bearer(reader.key)).status_code == 403


def test_undecorated_views_see_no_principal_whatever_key_is_sent(
    client: Client, reader: IssuedKey
) -> None:
    assert client.get("/open").json == {"key_id": None}
    assert client.get("/open", headers=bearer("sk_live_garbage")).json == {"key_id": None}
    # SPEC 4: no key is read for a view without the decorator, a valid one included.
    assert client.get("/open", headers=bearer(reader.key)).json == {"key_id": None}


def test_current_principal(app: Flask, client: Client, reader: IssuedKey) -> None:
    assert not current_principal
    with app.test_request_context("/"):
        assert current_principal == None  # noqa: E711 (a proxy: equal to None, not None itself)
    with app.app_context():
        assert not current_principal


def _as_compared(response: TestResponse) -> tuple[int, bytes, list[tuple[str, str]]]:
    return response.status_code, response.get_data(), sorted(response.headers.items())


@pytest.mark.parametrize(
    ("method", "path", "header"),
    [
        pytest.param("GET", "/read", None, id="missing"),
        pytest.param("GET", "/read", "Bearer sk_test_nope", id="invalid"),
        pytest.param("POST", "/write", "reader", id="forbidden"),
        pytest.param("GET", "/read", "Basic abc", id="other-scheme"),
    ],
)
def test_decorator_answers_byte_for_byte_like_the_middleware(
    client: Client,
    sqlite_store: SQLAlchemyKeyStore,
    reader: IssuedKey,
    method: str,
    path: str,
    header: str | None,
) -> None:
    plain = Flask("plain")

    @plain.route("/<path:anything>", methods=["GET", "POST"])
    def anything(anything: str) -> str:
        return "reached"

    guarded = Client(
        ApiKeyMiddleware(
            plain.wsgi_app,
            sqlite_store,
            rules=[
                ("GET", "/read", "clients:read"),
                ("POST", "/write", ["clients:write", "clients:read"]),
            ],
        )
    )
    headers = {}
    if header is not None:
        headers["Authorization"] = f"Bearer {reader.key}" if header == "reader" else header
    from_decorator = client.open(path, method=method, headers=headers)
    from_middleware = guarded.open(path, method=method, headers=headers)
    assert from_decorator.status_code in (401, 403)
    assert _as_compared(from_decorator) == _as_compared(from_middleware)


def test_store_fault_gives_the_middleware_503_and_public_views_work() -> None:
    app = make_app(APIKEY_DATABASE_URL="postgresql+psycopg://postgres@127.0.0.1:1/test")
    client = app.test_client()
    response = client.get("/read", headers=bearer("sk_test_" + "a" * 14 + "_" + "b" * 34))
    assert response.status_code == 401  # malformed: refused before any database work
    response = client.get("/read", headers=bearer(generate_key("test").key))
    assert response.status_code == 503
    assert response.json is not None
    assert response.json["error"]["code"] == "SERVICE_UNAVAILABLE"
    assert response.headers["Retry-After"] == "5"
    assert client.get("/open", headers=bearer(generate_key("test").key)).status_code == 200


def test_decorator_without_the_extension_names_the_fix() -> None:
    app = Flask(__name__)

    @app.get("/")
    @require_scopes("a")
    def view() -> str:
        return "never"

    app.config["PROPAGATE_EXCEPTIONS"] = True
    with pytest.raises(RuntimeError, match=r"ApiKeys\(app\)"):
        app.test_client().get("/")


@pytest.mark.parametrize("scope", [3, None, b"bytes", ["list"]])
def test_non_string_scope_fails_at_decoration(scope: object) -> None:
    with pytest.raises(TypeError, match="scope must be a string"):
        require_scopes(scope)  # type: ignore[arg-type]


def test_the_decorator_without_parentheses_says_how_to_use_it() -> None:
    def view() -> str:
        return "never"

    with pytest.raises(TypeError, match=r"needs parentheses: @require_scopes\(\)"):
        require_scopes(view)  # type: ignore[arg-type]


def test_malformed_scope_fails_at_decoration() -> None:
    with pytest.raises(ValueError, match="invalid scope"):
        require_scopes("two words")


@pytest.mark.parametrize(
    ("config", "setting"),
    [
        pytest.param({"APIKEY_BCRYPT_ROUNDS": 3}, "APIKEY_BCRYPT_ROUNDS", id="rounds-range"),
        pytest.param({"APIKEY_BCRYPT_ROUNDS": "12"}, "APIKEY_BCRYPT_ROUNDS", id="rounds-type"),
        pytest.param({"APIKEY_CACHE_SIZE": -1}, "APIKEY_CACHE_SIZE", id="cache-size"),
        pytest.param({"APIKEY_TIMEOUT": "soon"}, "APIKEY_TIMEOUT", id="timeout"),
        pytest.param({"APIKEY_PEPPER": 42}, "APIKEY_PEPPER", id="pepper"),
        pytest.param({"APIKEY_KEY_TYPES": ["prod"]}, "APIKEY_KEY_TYPES", id="key-types"),
        pytest.param({"APIKEY_KEY_TYPES": "live"}, "APIKEY_KEY_TYPES", id="key-types-str"),
        pytest.param({"APIKEY_HIDE_CREDENTIALS": "yes"}, "APIKEY_HIDE_CREDENTIALS", id="hide"),
        pytest.param({"APIKEY_DATABASE_URL": "not a url"}, "APIKEY_DATABASE_URL", id="url"),
        pytest.param(
            {"APIKEY_DATABASE_URL": "postgresql+nodriver://h/d"}, "APIKEY_DATABASE_URL", id="driver"
        ),
        pytest.param({"APIKEY_DATABASE_URL": 5}, "APIKEY_DATABASE_URL", id="url-type"),
        pytest.param({"APIKEY_REVOCATION": "later"}, "APIKEY_REVOCATION", id="revocation"),
        pytest.param(
            {"APIKEY_REVOCATION": "channel", "APIKEY_POLL_INTERVAL": 0},
            "APIKEY_POLL_INTERVAL",
            id="poll-interval",
        ),
        pytest.param({"APIKEY_THROTTLE_LIMIT": -1}, "APIKEY_THROTTLE_LIMIT", id="throttle"),
        pytest.param({"APIKEY_THROTTLE_WINDOW": "1m"}, "APIKEY_THROTTLE_WINDOW", id="window"),
    ],
)
def test_invalid_setting_fails_at_init_app_naming_it(
    config: dict[str, t.Any], setting: str, tmp_path: Path
) -> None:
    app = Flask(__name__, instance_path=str(tmp_path))
    app.config.update(config)
    with pytest.raises(ValueError, match=setting):
        ApiKeys(app)
    assert "apikeys" not in app.extensions


def test_settings_reach_the_store_and_middleware(
    sqlite_url: str, store_factory: StoreFactory
) -> None:
    app = Flask(__name__)
    app.config.update(
        APIKEY_DATABASE_URL=sqlite_url,
        APIKEY_BCRYPT_ROUNDS=5,
        APIKEY_PEPPER="pepper",
        APIKEY_KEY_TYPES=["live"],
        APIKEY_HIDE_CREDENTIALS=True,
    )
    apikeys = ApiKeys(app)
    seen: dict[str, t.Any] = {}

    @app.get("/")
    @require_scopes()
    def view() -> str:
        from flask import request

        seen["authorization"] = request.headers.get("Authorization")
        return "ok"

    with app.app_context():
        store = apikeys.store
    store.create_schema()
    live = store.create_key("live", key_type="live")
    test = store.create_key("test", key_type="test")
    assert store.hasher.rounds == 5
    client = app.test_client()
    assert client.get("/", headers=bearer(live.key)).status_code == 200
    assert seen["authorization"] is None
    assert client.get("/", headers=bearer(test.key)).status_code == 403
    # The key was hashed with the configured pepper: only a store with the
    # same pepper accepts it.
    unpeppered = store_factory(sqlite_url, bcrypt_rounds=5, pepper=None, schema=False)
    with pytest.raises(InvalidKeyError):
        unpeppered.authenticate(live.key)
    peppered = store_factory(sqlite_url, bcrypt_rounds=5, pepper=b"pepper", schema=False)
    assert peppered.authenticate(live.key).key_id == live.id


def test_default_database_is_in_the_instance_folder(tmp_path: Path) -> None:
    app = Flask(__name__, instance_path=str(tmp_path / "instance"))
    apikeys = ApiKeys(app)
    with app.app_context():
        store = apikeys.store
    assert store.engine.url.database == str(tmp_path / "instance" / "apikeys.db")
    store.create_schema()
    assert (tmp_path / "instance" / "apikeys.db").exists()
    store.close()


def test_init_app_twice_on_one_app_is_refused(sqlite_store: SQLAlchemyKeyStore) -> None:
    app = Flask(__name__)
    apikeys = ApiKeys(app, store=sqlite_store)
    with pytest.raises(RuntimeError, match="already"):
        apikeys.init_app(app)


@pytest.fixture
def two_stores(tmp_path: Path) -> Iterator[tuple[SQLAlchemyKeyStore, SQLAlchemyKeyStore]]:
    stores = []
    for name in ("one", "two"):
        store = SQLAlchemyKeyStore(f"sqlite:///{tmp_path / name}.db", bcrypt_rounds=TEST_ROUNDS)
        store.create_schema()
        stores.append(store)
    yield stores[0], stores[1]
    for store in stores:
        store.close()


def test_factory_pattern_with_two_apps_and_two_stores_in_one_process(
    tmp_path: Path,
) -> None:
    apikeys = ApiKeys()

    def create_app(name: str) -> Flask:
        app = Flask(name, instance_path=str(tmp_path / name))
        app.config["APIKEY_DATABASE_URL"] = f"sqlite:///{tmp_path / name}.db"
        app.config["APIKEY_BCRYPT_ROUNDS"] = TEST_ROUNDS
        apikeys.init_app(app)

        @app.get("/")
        @require_scopes()
        def view() -> ResponseReturnValue:
            return whoami()

        return app

    first, second = create_app("first"), create_app("second")
    keys = []
    for app in (first, second):
        with app.app_context():
            apikeys.store.create_schema()
            keys.append(apikeys.store.create_key(app.name))
    with first.app_context():
        first_store = apikeys.store
    with second.app_context():
        assert apikeys.store is not first_store
    first_client, second_client = first.test_client(), second.test_client()
    assert first_client.get("/", headers=bearer(keys[0].key)).json == {"key_id": keys[0].id}
    assert second_client.get("/", headers=bearer(keys[1].key)).json == {"key_id": keys[1].id}
    assert first_client.get("/", headers=bearer(keys[1].key)).status_code == 401
    assert second_client.get("/", headers=bearer(keys[0].key)).status_code == 401
    for app in (first, second):
        with app.app_context():
            apikeys.store.close()


def test_shared_store_across_apps(
    two_stores: tuple[SQLAlchemyKeyStore, SQLAlchemyKeyStore],
) -> None:
    store, _ = two_stores
    key = store.create_key("shared")
    for app in (make_app(store), make_app(store)):
        assert app.test_client().get("/read", headers=bearer(key.key)).status_code == 403
        assert app.test_client().get("/any", headers=bearer(key.key)).status_code == 200


def test_principal_is_the_stores_principal(client: Client, reader: IssuedKey) -> None:
    expected = Principal(reader.id, "reader", "test", frozenset({"clients:read"}))
    seen: list[bool] = []
    app = client.application
    assert isinstance(app, Flask)

    @app.get("/capture")
    @require_scopes("clients:read")
    def capture() -> str:
        seen.append(current_principal == expected)
        principal = current_principal
        seen.append(principal is not None and principal.has_scopes("clients:read"))
        return "ok"

    assert client.get("/capture", headers=bearer(reader.key)).status_code == 200
    assert seen == [True, True]


PREFLIGHT = {"Origin": "https://example.com", "Access-Control-Request-Method": "DELETE"}


def _preflight_app(store: SQLAlchemyKeyStore, **config: t.Any) -> Flask:
    app = make_app(store, **config)

    @app.route("/cors", methods=["OPTIONS", "DELETE"])
    @require_scopes("clients:delete")
    def cors() -> ResponseReturnValue:
        return whoami()

    return app


def test_a_preflight_to_a_decorated_view_needs_a_key_by_default(
    sqlite_store: SQLAlchemyKeyStore,
) -> None:
    client = _preflight_app(sqlite_store).test_client()
    response = client.options("/cors", headers=PREFLIGHT)
    assert response.status_code == 401
    assert response.json is not None
    assert response.json["error"]["code"] == "UNAUTHORIZED"


def test_a_preflight_passes_when_turned_on(sqlite_store: SQLAlchemyKeyStore) -> None:
    client = _preflight_app(sqlite_store, APIKEY_PREFLIGHT=True).test_client()
    response = client.options("/cors", headers=PREFLIGHT)
    assert response.status_code == 200
    assert response.json == {"key_id": None}
    assert client.delete("/cors", headers=PREFLIGHT).status_code == 401
