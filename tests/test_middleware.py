"""The middleware's answers, on the wire, for every kind of request."""

from __future__ import annotations

import json
import tracemalloc
import typing as t
from collections.abc import Iterable, Iterator

import pytest
from werkzeug.test import Client, EnvironBuilder, run_wsgi_app

from apikey_middleware import (
    ApiKeyError,
    ApiKeyMiddleware,
    IssuedKey,
    Principal,
    SQLAlchemyKeyStore,
)
from apikey_middleware.keys import generate_key

from .conftest import FORBIDDEN, INVALID, MISSING, RecordingApp, Statements, assert_refused, bearer

if t.TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIEnvironment


@pytest.fixture
def app() -> RecordingApp:
    return RecordingApp()


@pytest.fixture
def reader(sqlite_store: SQLAlchemyKeyStore) -> IssuedKey:
    return sqlite_store.create_key("reader", key_type="live", scopes=["clients:read"])


@pytest.fixture
def admin(sqlite_store: SQLAlchemyKeyStore) -> IssuedKey:
    return sqlite_store.create_key("admin", key_type="test", scopes=["clients:*"])


RULES = [
    ("GET", "/v1/clients", "clients:read"),
    (["POST", "PUT"], "/v1/clients", ["clients:write"]),
    ("DELETE", "/v1/clients/<int:id>", ("clients:delete",)),
    ("*", "/admin/<path:rest>", ["admin", "clients:read"]),
]


@pytest.fixture
def client(app: RecordingApp, sqlite_store: SQLAlchemyKeyStore) -> Client:
    return Client(
        ApiKeyMiddleware(app, sqlite_store, rules=RULES, public=["/health", "/static/<path:p>"])
    )


def test_valid_key_reaches_the_app_with_its_principal(
    client: Client, app: RecordingApp, reader: IssuedKey
) -> None:
    response = client.get("/v1/clients", headers=bearer(reader.key))
    assert response.status_code == 200
    assert response.json == {"key_id": reader.id}
    principal = app.last["apikey.principal"]
    assert principal == Principal(reader.id, "reader", "live", frozenset({"clients:read"}))
    assert app.last["HTTP_AUTHORIZATION"] == f"Bearer {reader.key}"


def test_missing_key_is_unauthorized(client: Client, app: RecordingApp) -> None:
    response = client.get("/v1/clients")
    assert_refused(response, 401, MISSING, 'Bearer realm="api"')
    assert app.environs == []


def test_exact_bytes_of_the_three_error_bodies(client: Client, reader: IssuedKey) -> None:
    assert client.get("/").get_data() == (
        b'{"success": false, "error": {"code": "UNAUTHORIZED", "message": "No API key provided"}}'
    )
    assert client.get("/", headers=bearer("sk_live_x")).get_data() == (
        b'{"success": false, "error": {"code": "INVALID_API_KEY", '
        b'"message": "The provided API key is invalid or has been revoked"}}'
    )
    assert client.post("/v1/clients", headers=bearer(reader.key)).get_data() == (
        b'{"success": false, "error": {"code": "FORBIDDEN", '
        b'"message": "Your API key does not have permission to perform this action"}}'
    )


NO_KEY_HEADERS = [
    pytest.param(None, id="no-header"),
    pytest.param("", id="empty"),
    pytest.param("   ", id="blank"),
    pytest.param("Bearer", id="bearer-alone"),
    pytest.param("Bearer    ", id="bearer-spaces"),
    pytest.param("Basic dXNlcjpwYXNz", id="basic-scheme"),
    pytest.param("Token {key}", id="other-scheme"),
    pytest.param("{key}", id="key-without-scheme"),
    pytest.param("Bearer\t{key}", id="tab-after-scheme"),
    pytest.param("Bearer{key}", id="no-space"),
]


@pytest.mark.parametrize("header", NO_KEY_HEADERS)
def test_no_bearer_key_is_unauthorized(
    client: Client, app: RecordingApp, reader: IssuedKey, header: str | None
) -> None:
    headers = {} if header is None else {"Authorization": header.format(key=reader.key)}
    response = client.get("/v1/clients", headers=headers)
    assert_refused(response, 401, MISSING, 'Bearer realm="api"')
    assert app.environs == []


def _other_secret(issued: IssuedKey) -> str:
    return generate_key(issued.record.key_type, issued.id).key


INVALID_HEADERS = [
    pytest.param(lambda k: f"Bearer {k}x", id="one-char-too-many"),
    pytest.param(lambda k: f"Bearer {k[:-1]}", id="truncated"),
    pytest.param(lambda k: f"Bearer {k[:-1]}{'A' if k[-1] != 'A' else 'B'}", id="bad-checksum"),
    pytest.param(lambda k: f"Bearer {k.replace('sk_live_', 'sk_test_')}", id="swapped-prefix"),
    pytest.param(lambda k: f"Bearer {k}\tx", id="tab-inside"),
    pytest.param(lambda k: f"Bearer \u00a0{k}", id="leading-no-break-space"),
    pytest.param(lambda k: f"Bearer {k}\u00a0", id="trailing-no-break-space"),
    pytest.param(lambda k: f"Bearer {k}, Bearer {k}", id="two-joined-headers"),
    pytest.param(lambda k: f"Bearer {k} extra", id="trailing-word"),
    pytest.param(lambda k: f"Bearer {k[:20]}\u00e9{k[21:]}", id="latin1-byte"),
    pytest.param(lambda k: f"Bearer {k[:20]}\x00{k[21:]}", id="nul-byte"),
    pytest.param(lambda k: "Bearer " + k * 2000, id="absurdly-long"),
    pytest.param(lambda k: "Bearer " + "A" * 57, id="right-length-garbage"),
    pytest.param(lambda k: "Bearer a=b, c=d", id="auth-params"),
]


@pytest.mark.parametrize("header", INVALID_HEADERS)
def test_bad_key_is_invalid_before_any_database_work(
    client: Client,
    app: RecordingApp,
    reader: IssuedKey,
    sqlite_store: SQLAlchemyKeyStore,
    header: t.Callable[[str], str],
) -> None:
    statements = Statements(sqlite_store)
    response = client.get("/v1/clients", headers={"Authorization": header(reader.key)})
    assert_refused(response, 401, INVALID, 'Bearer realm="api", error="invalid_token"')
    assert statements.seen == []
    assert app.environs == []
    assert reader.key not in response.get_data(as_text=True)


def test_unknown_id_is_invalid_after_one_read(
    client: Client, app: RecordingApp, sqlite_store: SQLAlchemyKeyStore
) -> None:
    statements = Statements(sqlite_store)
    response = client.get("/v1/clients", headers=bearer(generate_key("live").key))
    assert_refused(response, 401, INVALID, 'Bearer realm="api", error="invalid_token"')
    assert statements.key_reads == 1
    assert app.environs == []


def test_scheme_is_case_insensitive_and_spaces_may_repeat(
    client: Client, reader: IssuedKey
) -> None:
    for header in (f"bearer {reader.key}", f"BEARER   {reader.key}", f" Bearer {reader.key} "):
        assert client.get("/v1/clients", headers={"Authorization": header}).status_code == 200


def test_invalid_cases_are_indistinguishable(
    client: Client, sqlite_store: SQLAlchemyKeyStore, reader: IssuedKey
) -> None:
    revoked = sqlite_store.create_key("gone")
    sqlite_store.revoke(revoked.id)
    keys = {
        "malformed": "sk_live_nope",
        "unknown": generate_key("live").key,
        "wrong-secret": _other_secret(reader),
        "revoked": revoked.key,
    }
    answers = set()
    for key in keys.values():
        response = client.get("/v1/clients", headers=bearer(key))
        answers.add((response.status, response.get_data(), tuple(sorted(response.headers.items()))))
    assert len(answers) == 1


def test_key_in_the_query_string_is_never_read(
    client: Client, app: RecordingApp, reader: IssuedKey
) -> None:
    for name in ("api_key", "access_token", "key", "Authorization"):
        response = client.get(f"/v1/clients?{name}={reader.key}")
        assert_refused(response, 401, MISSING, 'Bearer realm="api"')
    assert app.environs == []


def test_missing_scope_is_forbidden_with_the_needed_scope(
    client: Client, app: RecordingApp, reader: IssuedKey
) -> None:
    response = client.post("/v1/clients", headers=bearer(reader.key))
    assert_refused(
        response,
        403,
        FORBIDDEN,
        'Bearer realm="api", error="insufficient_scope", scope="clients:write"',
    )
    assert app.environs == []


def test_every_required_scope_is_needed(client: Client, admin: IssuedKey) -> None:
    response = client.get("/admin/x", headers=bearer(admin.key))
    assert_refused(
        response,
        403,
        FORBIDDEN,
        'Bearer realm="api", error="insufficient_scope", scope="admin clients:read"',
    )


def test_wildcard_scope_covers_its_family(client: Client, admin: IssuedKey) -> None:
    assert client.delete("/v1/clients/7", headers=bearer(admin.key)).status_code == 200
    assert client.put("/v1/clients", headers=bearer(admin.key)).status_code == 200


def test_star_scope_covers_everything(client: Client, sqlite_store: SQLAlchemyKeyStore) -> None:
    root = sqlite_store.create_key("root", scopes=["*"])
    assert client.get("/admin/anything", headers=bearer(root.key)).status_code == 200


@pytest.mark.parametrize(
    ("method", "path", "status", "unscoped_status"),
    [
        pytest.param("GET", "/v1/clients", 200, 403, id="get-read"),
        pytest.param("HEAD", "/v1/clients", 200, 403, id="head-follows-get"),
        pytest.param("GET", "/v1/clients/", 200, 403, id="trailing-slash-same-rule"),
        pytest.param("GET", "/v1//clients", 200, 403, id="doubled-slashes-same-rule"),
        pytest.param("POST", "/v1/clients/", 403, 403, id="trailing-slash-still-guarded"),
        pytest.param("POST", "/v1//clients", 403, 403, id="doubled-slashes-still-guarded"),
        pytest.param("DELETE", "/v1/clients/3", 403, 403, id="delete-needs-delete"),
        pytest.param("DELETE", "/v1/clients/abc", 200, 200, id="converter-mismatch-falls-through"),
        pytest.param("GET", "/elsewhere", 200, 200, id="no-rule-needs-only-a-valid-key"),
        pytest.param("PATCH", "/admin/x", 403, 403, id="star-methods"),
    ],
)
def test_first_matching_rule_decides(
    client: Client,
    reader: IssuedKey,
    sqlite_store: SQLAlchemyKeyStore,
    method: str,
    path: str,
    status: int,
    unscoped_status: int,
) -> None:
    response = client.open(path, method=method, headers=bearer(reader.key))
    assert response.status_code == status
    # A key with no scope at all tells a matched rule from none.
    unscoped = sqlite_store.create_key("unscoped")
    response = client.open(path, method=method, headers=bearer(unscoped.key))
    assert response.status_code == unscoped_status


def test_rules_are_tried_in_order() -> None:
    store = t.cast(SQLAlchemyKeyStore, None)
    middleware = ApiKeyMiddleware(
        RecordingApp(),
        store,
        rules=[("GET", "/a/<x>", "first"), ("GET", "/a/b", "second")],
        log_usage=False,
    )
    assert middleware.rules.scopes_for("GET", "/a/b") == ("first",)


@pytest.mark.parametrize(
    "path",
    ["/health", "/static/css/site.css"],
)
def test_public_paths_pass_untouched_without_principal(
    client: Client, app: RecordingApp, path: str
) -> None:
    response = client.get(path, headers={"Authorization": "Bearer garbage"})
    assert response.status_code == 200
    assert "apikey.principal" not in app.last
    assert "apikey.error" not in app.last


def raw_get(
    application: t.Any, path: str, headers: dict[str, str] | None = None, method: str = "GET"
) -> tuple[int, bytes]:
    """A request whose ``PATH_INFO`` is exactly ``path``, as a server may pass it."""
    environ = EnvironBuilder(method="GET", headers=list((headers or {}).items())).get_environ()
    environ["PATH_INFO"] = path
    environ["REQUEST_METHOD"] = method
    body, status, _ = run_wsgi_app(application, environ, buffered=True)
    return int(status.split()[0]), b"".join(body)


@pytest.mark.parametrize("path", ["/health/", "//health", "/healthz", "/static", "/static//x"])
def test_public_paths_match_strictly(
    client: Client, app: RecordingApp, sqlite_store: SQLAlchemyKeyStore, path: str
) -> None:
    middleware = ApiKeyMiddleware(app, sqlite_store, public=["/health", "/static/<path:p>"])
    assert raw_get(middleware, path) == (401, json.dumps(MISSING).encode())
    assert app.environs == []


BAD_REQUEST = {
    "success": False,
    "error": {"code": "BAD_REQUEST", "message": "The request path or method is not valid"},
}

UNJUDGEABLE_PATHS = [
    pytest.param("/static/../v1/clients", id="dot-dot-under-public"),
    pytest.param("/static/x/../../v1/clients", id="dot-dots-deeper"),
    pytest.param("/health/..", id="dot-dot-after-public"),
    pytest.param("/v1/x/../clients", id="dot-dot-into-rule"),
    pytest.param("/v1/./clients", id="dot-into-rule"),
    pytest.param("/./health", id="dot-before-public"),
    pytest.param("/v1/clients/.", id="trailing-dot"),
    pytest.param("/static/..;/v1/clients", id="dot-dot-with-parameter"),
    pytest.param("/static/..\\v1\\clients", id="backslash-separators"),
    pytest.param("/static/%2e%2e/v1/clients", id="double-encoded-dots"),
    pytest.param("/static/%2E%2e/v1/clients", id="double-encoded-dots-upper"),
    pytest.param("/v1%2fclients", id="double-encoded-slash"),
    pytest.param("/static/%5c..%5cv1", id="double-encoded-backslash"),
    pytest.param("/static/%252e%252e/v1", id="triple-encoded"),
    pytest.param("/health\x00", id="nul"),
    pytest.param("/v1/clients\n", id="newline"),
    pytest.param("/\u0100", id="not-a-wsgi-string"),
    pytest.param("/static/\U0001f600", id="astral-not-a-wsgi-string"),
    pytest.param("/static/...", id="trailing-dots"),
    pytest.param("/static/x./v1", id="segment-ending-in-a-dot"),
    pytest.param("/static/x /v1", id="segment-ending-in-a-space"),
    pytest.param("/v1/%63lients", id="any-percent-triple-left"),
    pytest.param("/static/\xef\xbc\x8e\xef\xbc\x8e/v1/clients", id="fullwidth-dots"),
    pytest.param("/" + "a/" * 5000, id="too-long"),
]


@pytest.mark.parametrize("path", UNJUDGEABLE_PATHS)
def test_paths_an_app_may_resolve_elsewhere_get_400(
    app: RecordingApp, sqlite_store: SQLAlchemyKeyStore, admin: IssuedKey, path: str
) -> None:
    middleware = ApiKeyMiddleware(
        app, sqlite_store, rules=RULES, public=["/health", "/static/<path:p>"]
    )
    for headers in (None, bearer(admin.key)):
        assert raw_get(middleware, path, headers) == (400, json.dumps(BAD_REQUEST).encode())
    assert app.environs == []


@pytest.mark.parametrize(
    ("method", "path", "query", "scope"),
    [
        pytest.param("DELETE", "/v1/clients;x/3", "", "clients:delete", id="semicolon-parameter"),
        pytest.param("DELETE", "/V1/Clients/3", "", "clients:delete", id="upper-case"),
        pytest.param(
            "GET", "/v1/clients/3", "_method=DELETE", "clients:delete", id="query-override"
        ),
        pytest.param(
            "OPTIONS", "/v1/clients", "", "clients:read clients:write", id="unnamed-method"
        ),
        pytest.param("PROPFIND", "/v1/clients", "", "clients:read clients:write", id="webdav"),
    ],
)
def test_every_spelling_an_app_may_route_by_is_guarded(
    client: Client,
    app: RecordingApp,
    reader: IssuedKey,
    method: str,
    path: str,
    query: str,
    scope: str,
) -> None:
    unscoped = reader  # holds clients:read only
    response = client.open(path, method=method, query_string=query, headers=bearer(unscoped.key))
    assert_refused(
        response,
        403,
        FORBIDDEN,
        f'Bearer realm="api", error="insufficient_scope", scope="{scope}"',
    )
    assert app.environs == []


def test_percent_encoded_dots_from_a_real_url_get_400(client: Client, app: RecordingApp) -> None:
    for url in ("/static/%2e%2e/v1/clients", "/static/%2E./v1/clients", "/v1/%2e/clients"):
        response = client.get(url)
        assert response.status_code == 400
        assert response.json == BAD_REQUEST
    assert app.environs == []


@pytest.mark.parametrize(
    "path", ["/static/site.css", "/static/.well-known/x", "/static/a..b", "/static/.x.y", "/health"]
)
def test_dots_inside_names_are_ordinary(client: Client, app: RecordingApp, path: str) -> None:
    assert client.get(path).status_code == 200
    assert app.last["PATH_INFO"] == path


@pytest.mark.parametrize(
    "method",
    [
        pytest.param("G" * 60_000, id="huge"),
        pytest.param("GET /v1 HTTP/1.1", id="spaces"),
        pytest.param("G\u00e9T", id="latin1"),
        pytest.param("", id="empty"),
        pytest.param("A" * 33, id="one-too-long"),
    ],
)
def test_a_method_that_is_not_a_short_token_gets_400(
    app: RecordingApp, sqlite_store: SQLAlchemyKeyStore, reader: IssuedKey, method: str
) -> None:
    middleware = ApiKeyMiddleware(app, sqlite_store, rules=RULES)
    assert raw_get(middleware, "/v1/clients", bearer(reader.key), method)[0] == 400
    assert app.environs == []


def test_hostile_methods_and_paths_are_not_remembered(
    app: RecordingApp, sqlite_store: SQLAlchemyKeyStore
) -> None:
    middleware = ApiKeyMiddleware(app, sqlite_store, rules=RULES, public=["/health"])
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for n in range(300):
            raw_get(middleware, "/health", method=f"{'G' * 60_000}{n}")
            raw_get(middleware, f"/health/{n}{'x' * 5_000}")
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert grown < 2_000_000, grown


@pytest.mark.parametrize("header", ["X-HTTP-Method-Override", "X-HTTP-Method", "X-Method-Override"])
def test_a_method_override_needs_the_scopes_of_both_methods(
    client: Client, app: RecordingApp, reader: IssuedKey, admin: IssuedKey, header: str
) -> None:
    assert client.get("/v1/clients/3", headers=bearer(reader.key)).status_code == 200
    response = client.get("/v1/clients/3", headers={**bearer(reader.key), header: "delete"})
    assert_refused(
        response,
        403,
        FORBIDDEN,
        'Bearer realm="api", error="insufficient_scope", scope="clients:delete"',
    )
    both = client.post("/v1/clients", headers={**bearer(admin.key), header: "DELETE"})
    assert both.status_code == 200
    odd = client.get("/v1/clients", headers={**bearer(admin.key), header: "DE LETE"})
    assert odd.status_code == 400


PREFLIGHT = {"Origin": "https://example.com", "Access-Control-Request-Method": "POST"}


def test_cors_preflight_needs_a_key_by_default(client: Client, app: RecordingApp) -> None:
    response = client.options("/v1/clients", headers=PREFLIGHT)
    assert_refused(response, 401, MISSING, 'Bearer realm="api"')
    overridden = {**PREFLIGHT, "X-HTTP-Method-Override": "DELETE"}
    assert client.options("/v1/clients/1", headers=overridden).status_code == 401
    assert app.environs == []


def test_cors_preflight_passes_without_a_key_when_turned_on(
    app: RecordingApp, sqlite_store: SQLAlchemyKeyStore
) -> None:
    client = Client(ApiKeyMiddleware(app, sqlite_store, rules=RULES, preflight=True))
    assert client.options("/v1/clients", headers=PREFLIGHT).status_code == 200
    assert "apikey.principal" not in app.last
    assert client.options("/v1/clients", headers={"Origin": "x"}).status_code == 401
    assert client.options("/v1/clients").status_code == 401
    # Nor does it open paths that cannot be judged.
    assert client.options("/v1/./clients", headers=PREFLIGHT).status_code == 400


def test_refused_key_type_is_forbidden(
    app: RecordingApp, sqlite_store: SQLAlchemyKeyStore, reader: IssuedKey, admin: IssuedKey
) -> None:
    client = Client(ApiKeyMiddleware(app, sqlite_store, key_types=["live"]))
    assert client.get("/", headers=bearer(reader.key)).status_code == 200
    response = client.get("/", headers=bearer(admin.key))
    assert_refused(response, 403, FORBIDDEN, 'Bearer realm="api", error="insufficient_scope"')


def test_hide_credentials_removes_the_header(
    app: RecordingApp, sqlite_store: SQLAlchemyKeyStore, reader: IssuedKey
) -> None:
    client = Client(ApiKeyMiddleware(app, sqlite_store, hide_credentials=True))
    assert client.get("/", headers=bearer(reader.key)).status_code == 200
    assert "HTTP_AUTHORIZATION" not in app.last


def test_environ_key_is_configurable(
    app: RecordingApp, sqlite_store: SQLAlchemyKeyStore, reader: IssuedKey
) -> None:
    client = Client(ApiKeyMiddleware(app, sqlite_store, environ_key="my.key"))
    client.get("/", headers=bearer(reader.key))
    assert app.last["my.key"].key_id == reader.id
    assert "apikey.principal" not in app.last


@pytest.mark.parametrize(
    ("header", "code", "status"),
    [
        pytest.param(None, "UNAUTHORIZED", 401, id="missing"),
        pytest.param("Bearer sk_test_bad", "INVALID_API_KEY", 401, id="invalid"),
        pytest.param("Bearer {key}", "FORBIDDEN", 403, id="forbidden"),
    ],
)
def test_optional_mode_passes_the_reason_to_the_app(
    app: RecordingApp,
    sqlite_store: SQLAlchemyKeyStore,
    reader: IssuedKey,
    header: str | None,
    code: str,
    status: int,
) -> None:
    client = Client(ApiKeyMiddleware(app, sqlite_store, rules=RULES, required=False))
    headers = {} if header is None else {"Authorization": header.format(key=reader.key)}
    assert client.post("/v1/clients", headers=headers).status_code == 200
    error = app.last["apikey.error"]
    assert isinstance(error, ApiKeyError)
    assert (error.code, error.status) == (code, status)
    assert str(error) == error.message
    assert "apikey.principal" not in app.last
    assert error.get_response().status_code == status


def test_optional_mode_sets_the_principal_of_a_good_key(
    app: RecordingApp, sqlite_store: SQLAlchemyKeyStore, reader: IssuedKey
) -> None:
    client = Client(ApiKeyMiddleware(app, sqlite_store, required=False))
    client.get("/", headers=bearer(reader.key))
    assert app.last["apikey.principal"].key_id == reader.id
    assert "apikey.error" not in app.last


def test_revoked_key_is_refused_on_the_next_request(
    client: Client, sqlite_store: SQLAlchemyKeyStore, reader: IssuedKey
) -> None:
    assert client.get("/v1/clients", headers=bearer(reader.key)).status_code == 200
    sqlite_store.revoke(reader.id)
    response = client.get("/v1/clients", headers=bearer(reader.key))
    assert_refused(response, 401, INVALID, 'Bearer realm="api", error="invalid_token"')


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        pytest.param({"rules": [("GET", "/x", "bad scope")]}, "scope", id="bad-scope"),
        pytest.param({"rules": [("GET", "x", "a")]}, "slash", id="relative-path"),
        pytest.param({"rules": [([], "/x", "a")]}, "methods", id="no-methods"),
        pytest.param({"key_types": ["prod"]}, "key_types", id="bad-key-type"),
        pytest.param({"environ_key": ""}, "environ_key", id="empty-environ-key"),
        pytest.param({"public": ["nope"]}, "slash", id="relative-public"),
    ],
)
def test_misconfiguration_fails_at_construction(
    app: RecordingApp,
    sqlite_store: SQLAlchemyKeyStore,
    arguments: dict[str, t.Any],
    message: str,
) -> None:
    with pytest.raises((ValueError, TypeError), match=message):
        ApiKeyMiddleware(app, sqlite_store, **arguments)


def test_flush_and_close_are_safe_to_call_twice(
    app: RecordingApp, sqlite_store: SQLAlchemyKeyStore, reader: IssuedKey
) -> None:
    middleware = ApiKeyMiddleware(app, sqlite_store)
    client = Client(middleware)
    for _ in range(3):
        client.get("/", headers=bearer(reader.key))
    middleware.flush()
    middleware.flush()
    assert sum(row.requests for row in sqlite_store.usage(reader.id)) == 3  # written once
    middleware.close()
    middleware.close()
    writer = middleware.usage
    assert writer is not None
    assert writer.pending == 0
    assert not writer.running
    assert client.get("/", headers=bearer(reader.key)).status_code == 200
    middleware.flush()
    assert writer.dropped == 1  # a closed writer only counts what it can no longer log
    assert sum(row.requests for row in sqlite_store.usage(reader.id)) == 3


def test_response_iterable_of_the_app_is_passed_through(
    sqlite_store: SQLAlchemyKeyStore, reader: IssuedKey
) -> None:
    closed: list[bool] = []

    class Body:
        def __iter__(self) -> Iterator[bytes]:
            yield b"streamed"

        def close(self) -> None:
            closed.append(True)

    def streaming(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        start_response("200 OK", [("Content-Type", "text/plain")])
        return Body()

    client = Client(ApiKeyMiddleware(streaming, sqlite_store))
    response = client.get("/", headers=bearer(reader.key))
    assert response.get_data() == b"streamed"
    response.close()
    assert closed == [True]


@pytest.mark.parametrize(
    ("query", "headers"),
    [
        pytest.param("_method=DELETE&_method=DELETE", {}, id="two-in-the-query"),
        pytest.param("_method=DELETE", {"X-HTTP-Method-Override": "DELETE"}, id="query-and-header"),
        pytest.param("", {"X-HTTP-Method": "GET", "X-Method-Override": "GET"}, id="two-headers"),
        pytest.param("_method=PROPFIND", {}, id="not-a-standard-method"),
        pytest.param("_method=" + "Q" * 20, {}, id="long"),
        pytest.param("_method=", {}, id="empty"),
        pytest.param("_method=G%C3%89T", {}, id="not-ascii"),
        pytest.param("%5Fmethod=PROPFIND", {}, id="percent-encoded-name"),
        pytest.param("&".join(f"_method=Q{n}" for n in range(150)), {}, id="150-unique-values"),
    ],
)
def test_more_than_one_override_or_an_unknown_one_gets_400_before_any_key(
    client: Client, app: RecordingApp, admin: IssuedKey, query: str, headers: dict[str, str]
) -> None:
    for key in ({}, bearer(admin.key)):
        response = client.get("/v1/clients/3", query_string=query, headers={**key, **headers})
        assert response.status_code == 400
        assert response.json == BAD_REQUEST
    assert app.environs == []


def test_one_standard_override_in_any_case_is_judged(
    client: Client, app: RecordingApp, reader: IssuedKey
) -> None:
    for query in ("_method=delete", "_method=%20DELETE%20", "%5Fmethod=Delete"):
        response = client.get("/v1/clients/3", query_string=query, headers=bearer(reader.key))
        assert response.status_code == 403, query
    assert (
        client.get(
            "/v1/clients/3", query_string="_method=get", headers=bearer(reader.key)
        ).status_code
        == 200
    )


def test_overrides_do_not_fill_the_rule_cache(
    app: RecordingApp, sqlite_store: SQLAlchemyKeyStore
) -> None:
    middleware = ApiKeyMiddleware(app, sqlite_store, rules=RULES)
    client = Client(middleware)
    client.get("/v1/clients")
    before = middleware.rules._cached.cache_info().currsize
    for n in range(100):
        query = "&".join(f"_method=Q{n}x{m}" for m in range(20))
        assert client.get("/v1/clients", query_string=query).status_code == 400
        assert client.get("/v1/clients", query_string=f"_method=Q{n}").status_code == 400
    assert middleware.rules._cached.cache_info().currsize == before
