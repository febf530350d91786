"""The dashboard over HTTP (Flask's test client): who sees what, CSRF, bad
input, headers, and a key that is shown once and never again."""

from __future__ import annotations

import base64
import json
import logging
import re
import typing as t
import urllib.parse
import zlib
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from flask import Flask, session
from flask.testing import FlaskClient
from werkzeug.test import TestResponse

from apikey_middleware import SQLAlchemyKeyStore, UsageBucket
from apikey_middleware.dashboard import create_dashboard
from apikey_middleware.dashboard._charts import draw
from apikey_middleware.dashboard._forms import check_rate_limit
from apikey_middleware.dashboard.security import CONTENT_SECURITY_POLICY
from apikey_middleware.usage import UsageRecord

PREFIX = "/settings/api-keys"
SCOPES = {"clients:read": "Read clients", "clients:write": "Create clients"}
WARNING = "API keys are only displayed once upon creation. Make sure to save them securely."
TOKEN_RE = re.compile(r'name="csrf_token" value="([^"]+)"')


def make_app(store: SQLAlchemyKeyStore, **options: t.Any) -> Flask:
    app = Flask(__name__)
    app.secret_key = "test secret"
    options.setdefault("scopes", SCOPES)
    app.register_blueprint(
        create_dashboard(
            store,
            current_owner=lambda: session.get("account"),
            login_url="/login?from=dashboard",
            **options,
        ),
        url_prefix=PREFIX,
    )

    @app.get("/as/<name>")
    def sign_in(name: str) -> str:
        session.clear()
        session["account"] = name
        return "ok"

    return app


class Browser:
    """A signed-in test client that posts forms as a page would."""

    def __init__(self, app: Flask, account: str | None) -> None:
        self.client: FlaskClient = app.test_client()
        if account is not None:
            self.client.get(f"/as/{account}")

    def get(self, path: str, **kwargs: t.Any) -> TestResponse:
        return self.client.get(PREFIX + path, **kwargs)

    def token(self) -> str:
        match = TOKEN_RE.search(self.get("/new").get_data(as_text=True))
        assert match
        return str(match.group(1))

    def post(self, path: str, data: dict[str, t.Any], *, token: bool = True) -> TestResponse:
        if token:
            data = {"csrf_token": self.token(), **data}
        return self.client.post(PREFIX + path, data=data)

    def generate(self, **fields: t.Any) -> TestResponse:
        data = {"name": "billing", "key_type": "live", "scopes": ["clients:read"], **fields}
        return self.post("/new", data)


def shown_key(response: TestResponse) -> str:
    keys = set(re.findall(r"sk_(?:test|live)_[A-Za-z0-9_]{40,}", response.get_data(as_text=True)))
    assert len(keys) == 1
    return str(keys.pop())


@pytest.fixture
def app(sqlite_store: SQLAlchemyKeyStore) -> Flask:
    return make_app(sqlite_store)


@pytest.fixture
def alice(app: Flask) -> Browser:
    return Browser(app, "alice")


@pytest.fixture
def bob(app: Flask) -> Browser:
    return Browser(app, "bob")


# -- signing in ------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path"),
    [("GET", "/"), ("GET", "/new"), ("POST", "/new"), ("GET", "/abcdefghijklmn/usage"),
     ("POST", "/abcdefghijklmn/revoke"), ("POST", "/abcdefghijklmn/rotate")],
)  # fmt: skip
def test_signed_out_requests_go_to_the_login_url(app: Flask, method: str, path: str) -> None:
    response = app.test_client().open(PREFIX + path, method=method)
    assert response.status_code == 303
    assert response.location == "/login?from=dashboard&next=" + (PREFIX + path).replace("/", "%2F")


def test_static_files_are_served_to_anyone_and_may_be_cached(app: Flask) -> None:
    client = app.test_client()
    for name, kind in (("dashboard.css", "text/css"), ("dashboard.js", "text/javascript")):
        response = client.get(f"{PREFIX}/static/{name}")
        assert response.status_code == 200
        assert response.mimetype == kind
        assert response.headers["Content-Security-Policy"] == CONTENT_SECURITY_POLICY
        assert response.headers.get("Cache-Control") != "no-store"
        response.close()


def test_current_owner_must_return_a_string(sqlite_store: SQLAlchemyKeyStore) -> None:
    app = Flask(__name__)
    app.secret_key = "x"
    app.testing = True
    app.register_blueprint(
        create_dashboard(sqlite_store, current_owner=lambda: 7, login_url="/l", scopes=SCOPES)  # type: ignore[arg-type,return-value]
    )
    with pytest.raises(TypeError, match="current_owner must return a str"):
        app.test_client().get("/")


# -- generating a key --------------------------------------------------------


def test_generating_a_key_shows_it_once_with_the_warning(
    alice: Browser, sqlite_store: SQLAlchemyKeyStore
) -> None:
    response = alice.generate(scopes=["clients:read", "clients:write"], expires_on="2099-01-31")
    assert response.status_code == 201
    page = response.get_data(as_text=True)
    assert WARNING in page
    key = shown_key(response)
    assert key.startswith("sk_live_")
    (record,) = sqlite_store.list_keys(owner="alice")
    assert (record.name, record.key_type, record.scopes) == (
        "billing",
        "live",
        ("clients:read", "clients:write"),
    )
    assert record.expires_at == datetime(2099, 1, 31, tzinfo=UTC)
    assert sqlite_store.authenticate(key).owner == "alice"


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        pytest.param({"name": ""}, "Give the key a name.", id="empty-name"),
        pytest.param({"name": "   "}, "Give the key a name.", id="blank-name"),
        pytest.param({"name": "x" * 201}, "Use a shorter name", id="long-name"),
        pytest.param({"name": "a\x07b"}, "without control characters", id="control-name"),
        pytest.param({"scopes": []}, "Choose at least one permission.", id="no-permission"),
        pytest.param(
            {"scopes": ["clients:delete"]}, "Choose permissions from the list.", id="unknown-scope"
        ),
        pytest.param(
            {"scopes": ["clients:read", "*"]},
            "Choose permissions from the list.",
            id="wildcard-smuggled",
        ),
        pytest.param({"key_type": "prod"}, "Choose Test or Live.", id="bad-type"),
        pytest.param({"key_type": ""}, "Choose Test or Live.", id="no-type"),
        pytest.param(
            {"expires_on": "2001-01-01"}, "Choose an expiry date in the future.", id="past-expiry"
        ),
        pytest.param(
            {"expires_on": datetime.now(UTC).date().isoformat()},
            "Choose an expiry date in the future.",
            id="expiry-today",
        ),
        pytest.param({"expires_on": "31/12/2099"}, "Give the expiry as a date", id="bad-date"),
    ],
)
def test_bad_input_shows_the_form_again_and_creates_nothing(
    alice: Browser, sqlite_store: SQLAlchemyKeyStore, fields: dict[str, t.Any], message: str
) -> None:
    response = alice.generate(**fields)
    assert response.status_code == 400
    page = response.get_data(as_text=True)
    assert message in page
    assert 'action="/settings/api-keys/new"' in page
    assert WARNING not in page
    assert 'id="new-key"' not in page
    assert sqlite_store.list_keys(include_revoked=True) == []


def test_a_key_pasted_into_the_name_is_refused_and_not_shown_again(
    alice: Browser, sqlite_store: SQLAlchemyKeyStore
) -> None:
    other = sqlite_store.create_key("other").key
    response = alice.generate(name=f"prod {other}")
    assert response.status_code == 400
    assert other not in response.get_data(as_text=True)
    assert other[23:] not in response.get_data(as_text=True)


def test_the_form_keeps_what_was_typed(alice: Browser) -> None:
    page = alice.generate(name="billing", scopes=["clients:write"], expires_on="2001-02-03")
    text = page.get_data(as_text=True)
    assert 'value="billing"' in text
    assert re.search(r'value="clients:write"[^>]*checked', text)
    assert not re.search(r'value="clients:read"[^>]*checked', text)
    assert re.search(r'value="live"[^>]*checked', text)


def test_a_key_made_with_a_rate_limit_has_it_and_the_list_shows_it(
    alice: Browser, sqlite_store: SQLAlchemyKeyStore
) -> None:
    assert 'name="rate_limit"' in alice.get("/new").get_data(as_text=True)
    for bad in ("lots", "100/fortnight", "0/minute", "100/minute;x"):
        response = alice.generate(rate_limit=bad)
        assert response.status_code == 400
        assert "Write a rate limit such as 100/minute" in response.get_data(as_text=True)
    assert sqlite_store.list_keys(include_revoked=True) == []
    key = shown_key(alice.generate(rate_limit="10/second;1000/hour"))
    record = sqlite_store.get_key(key[8:22])
    assert record is not None
    assert record.rate_limit == "10/second;1000/hour"
    assert "10/second;1000/hour" in alice.get("/").get_data(as_text=True)
    assert sqlite_store.get_key(shown_key(alice.generate())[8:22]).rate_limit is None  # type: ignore[union-attr]
    # A key without its own limit has the app's, not none.
    listing = alice.get("/").get_data(as_text=True)
    assert "<td>App default</td>" in listing
    assert "<td>None</td>" not in listing


@pytest.mark.parametrize(
    "value", ["100/minute", "10 per second", "1000/2 hours", "10/second;1000/hour", "5/day, 9/year"]
)
def test_rate_limits_in_the_limits_notation_are_accepted(value: str) -> None:
    assert check_rate_limit(f" {value} ") == value


# -- CSRF and headers ---------------------------------------------------------


def test_a_form_without_its_token_changes_nothing(
    alice: Browser, bob: Browser, sqlite_store: SQLAlchemyKeyStore
) -> None:
    key = shown_key(alice.generate())
    key_id = key[8:22]
    fields = {"name": "forged", "key_type": "test", "scopes": ["clients:read"]}
    for data in ({}, {"csrf_token": ""}, {"csrf_token": "x" * 43}, {"csrf_token": bob.token()}):
        assert alice.post("/new", {**fields, **data}, token=False).status_code == 400
        response = alice.post(f"/{key_id}/revoke", data, token=False)
        assert response.status_code == 400
        assert "This form was refused" in response.get_data(as_text=True)
        assert (
            alice.post(f"/{key_id}/rotate", {"grace": "1 hour", **data}, token=False).status_code
            == 400
        )
    assert [r.name for r in sqlite_store.list_keys(include_revoked=True)] == ["billing"]
    assert sqlite_store.authenticate(key).key_id == key_id


def test_a_cross_site_post_is_refused_even_with_the_token(
    alice: Browser, sqlite_store: SQLAlchemyKeyStore
) -> None:
    response = alice.client.post(
        PREFIX + "/new",
        data={
            "csrf_token": alice.token(),
            "name": "x",
            "key_type": "test",
            "scopes": "clients:read",
        },
        headers={"Sec-Fetch-Site": "cross-site"},
    )
    assert response.status_code == 400
    assert sqlite_store.list_keys() == []


def test_every_page_sends_the_security_headers(alice: Browser) -> None:
    key_id = shown_key(alice.generate())[8:22]
    responses = [
        alice.get("/"),
        alice.get("/new"),
        alice.generate(),
        alice.generate(name=""),
        alice.get(f"/{key_id}/usage"),
        alice.get(f"/{key_id}/revoke"),
        alice.get(f"/{key_id}/rotate"),
        alice.post(f"/{key_id}/rotate", {"grace": "1 hour"}),
        alice.get("/abcdefghijklmn/usage"),
        alice.post("/new", {}, token=False),
        alice.post(f"/{key_id}/revoke", {}),
    ]
    assert [r.status_code for r in responses] == [
        200,
        200,
        201,
        400,
        200,
        200,
        200,
        201,
        404,
        400,
        303,
    ]
    for response in responses:
        headers = response.headers
        assert headers["Content-Security-Policy"] == CONTENT_SECURITY_POLICY
        assert headers["X-Frame-Options"] == "DENY"
        assert headers["Cache-Control"] == "no-store"
        assert headers["X-Content-Type-Options"] == "nosniff"
    assert "unsafe-inline" not in CONTENT_SECURITY_POLICY
    assert "frame-ancestors 'none'" in CONTENT_SECURITY_POLICY
    for response in responses:
        assert not re.search(r"<script(?![^>]*\bsrc=)", response.get_data(as_text=True))
        assert " style=" not in response.get_data(as_text=True)


def test_the_session_cookie_is_samesite_lax_and_http_only(alice: Browser) -> None:
    cookie = alice.client.get_cookie("session")
    assert cookie is not None
    assert cookie.same_site == "Lax"
    assert cookie.http_only


def test_a_host_that_sends_its_cookie_cross_site_is_refused(
    sqlite_store: SQLAlchemyKeyStore,
) -> None:
    app = Flask(__name__)
    app.config["SESSION_COOKIE_SAMESITE"] = "None"
    with pytest.raises(ValueError, match="SESSION_COOKIE_SAMESITE"):
        make_app_on(app, sqlite_store)
    app = Flask(__name__)
    app.config["SESSION_COOKIE_HTTPONLY"] = False
    with pytest.raises(ValueError, match="SESSION_COOKIE_HTTPONLY"):
        make_app_on(app, sqlite_store)
    app = Flask(__name__)
    app.config["SESSION_COOKIE_SAMESITE"] = "Strict"
    make_app_on(app, sqlite_store)
    assert app.config["SESSION_COOKIE_SAMESITE"] == "Strict"


def make_app_on(app: Flask, store: SQLAlchemyKeyStore) -> None:
    app.register_blueprint(
        create_dashboard(store, current_owner=lambda: None, login_url="/l", scopes=SCOPES)
    )


# -- the key, shown once --------------------------------------------------------


def session_of(client: FlaskClient) -> str:
    """The session cookie's payload, decoded (Flask signs it, it is not secret)."""
    cookie = client.get_cookie("session")
    assert cookie is not None
    payload = cookie.value.lstrip(".").split(".")[0]
    data = base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))
    if cookie.value.startswith("."):
        data = zlib.decompress(data)
    return json.dumps(json.loads(data))


def test_the_key_is_never_shown_again_nor_kept(
    alice: Browser, sqlite_store: SQLAlchemyKeyStore, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    created = alice.generate()
    key = shown_key(created)
    key_id = key[8:22]
    rotated = alice.post(f"/{key_id}/rotate", {"grace": "1 hour"})
    new_key = shown_key(rotated)
    later = [
        alice.get("/"),
        alice.get("/?revoked=1"),
        alice.get(f"/{key_id}/usage"),
        alice.get(f"/{key_id}/rotate"),
        alice.get(f"/{key_id}/revoke"),
        alice.post(f"/{key_id}/revoke", {}),
        alice.get("/"),  # with the flash message
        alice.get("/new"),
    ]
    seen = [r.get_data(as_text=True) + repr(sorted(r.headers.items())) for r in later]
    seen += [created.location or "", rotated.location or "", session_of(alice.client), caplog.text]
    everything = "\n".join(seen)
    for secret in (key, key[23:], new_key, new_key[23:]):
        assert secret not in everything
    assert "Revoked “billing”" in later[6].get_data(as_text=True)


# -- one account, its own keys ------------------------------------------------------


def test_another_accounts_key_answers_404_everywhere(
    store: SQLAlchemyKeyStore, tmp_path: Path
) -> None:
    app = make_app(store)
    alice, bob = Browser(app, "alice"), Browser(app, "bob")
    key = shown_key(alice.generate())
    key_id = key[8:22]
    unowned = store.create_key("admin key")  # made by an administrator: no owner
    for browser, target in ((bob, key_id), (alice, unowned.id), (alice, "zzzzzzzzzzzzzz"),
                            (alice, "..%2f" + key_id), (alice, key_id.upper())):  # fmt: skip
        for path in ("usage", "revoke", "rotate"):
            assert browser.get(f"/{target}/{path}").status_code == 404
        assert browser.post(f"/{target}/revoke", {}).status_code == 404
        assert browser.post(f"/{target}/rotate", {"grace": "1 hour"}).status_code == 404
    assert "billing" not in bob.get("/").get_data(as_text=True)
    assert "admin key" not in alice.get("/").get_data(as_text=True)
    assert store.authenticate(key).key_id == key_id
    assert store.authenticate(unowned.key).key_id == unowned.id
    assert [r.id for r in store.list_keys(include_revoked=True)] == [key_id, unowned.id]


def test_every_change_is_a_post(alice: Browser, sqlite_store: SQLAlchemyKeyStore) -> None:
    key = shown_key(alice.generate())
    key_id = key[8:22]
    alice.get(f"/{key_id}/revoke")
    alice.get(f"/{key_id}/rotate?grace=1+hour")
    alice.get("/new?name=x&key_type=test&scopes=clients:read")
    assert alice.client.delete(f"{PREFIX}/{key_id}/revoke").status_code == 405
    assert len(sqlite_store.list_keys()) == 1
    assert sqlite_store.authenticate(key).key_id == key_id


def test_revoke_and_rotate(alice: Browser, sqlite_store: SQLAlchemyKeyStore) -> None:
    key = shown_key(alice.generate())
    key_id = key[8:22]
    page = alice.get(f"/{key_id}/revoke").get_data(as_text=True)
    assert "immediately invalidates all requests" in page
    assert ">Confirm<" in page
    response = alice.post(f"/{key_id}/rotate", {"grace": "no such period"})
    assert response.status_code == 400
    rotated = alice.post(f"/{key_id}/rotate", {"grace": "Stop the old key now"})
    assert rotated.status_code == 201
    assert "revoked, refused from now on" in rotated.get_data(as_text=True)
    new_key = shown_key(rotated)
    assert sqlite_store.authenticate(new_key).name == "billing"
    again = alice.post(f"/{key_id}/rotate", {"grace": "1 hour"})
    assert again.status_code == 409
    assert "cannot be rotated" in again.get_data(as_text=True)
    response = alice.post(f"/{new_key[8:22]}/revoke", {})
    assert response.status_code == 303
    assert sqlite_store.list_keys() == []
    assert "billing" in alice.get("/?revoked=1").get_data(as_text=True)


def test_find_and_pages(sqlite_store: SQLAlchemyKeyStore) -> None:
    alice = Browser(make_app(sqlite_store, per_page=2), "alice")
    for name in ("alpha", "beta", "gamma"):
        sqlite_store.create_key(name, owner="alice")
    first = alice.get("/").get_data(as_text=True)
    assert "gamma" in first
    assert "beta" in first
    assert "alpha" not in first
    assert "Page 1 of 2" in first
    assert "alpha" in alice.get("/?page=2").get_data(as_text=True)
    assert "gamma" in alice.get("/?page=99").get_data(as_text=True)  # out of range: the first
    found = alice.get("/?q=ALP").get_data(as_text=True)
    assert "alpha" in found
    assert "beta" not in found
    assert "No key matches" in alice.get("/?q=zzz").get_data(as_text=True)


def test_a_store_that_fails_gets_a_page_saying_so(tmp_path: Path) -> None:
    broken = SQLAlchemyKeyStore(f"sqlite:///{tmp_path / 'none' / 'keys.db'}", bcrypt_rounds=4)
    try:
        alice = Browser(make_app(broken), "alice")
        response = alice.get("/")
        assert response.status_code == 503
        assert "The key store did not answer" in response.get_data(as_text=True)
    finally:
        broken.close()


def test_templates_are_overridden_by_the_apps_own(
    sqlite_store: SQLAlchemyKeyStore, tmp_path: Path
) -> None:
    folder = tmp_path / "templates" / "apikey_dashboard"
    folder.mkdir(parents=True)
    (folder / "layout.html").write_text(
        "<html><body class=site>{% include 'apikey_dashboard/_assets.html' %}"
        "{% block content %}{% endblock %}</body></html>"
    )
    app = make_app(sqlite_store)
    app.template_folder = str(tmp_path / "templates")
    page = Browser(app, "alice").get("/").get_data(as_text=True)
    assert page.startswith("<html><body class=site>")
    assert "Generate New Key" in page
    assert f"{PREFIX}/static/dashboard.css" in page


@pytest.mark.parametrize(
    ("options", "error"),
    [
        ({"current_owner": "alice"}, TypeError),
        ({"login_url": ""}, ValueError),
        ({"scopes": {}}, ValueError),
        ({"scopes": {"bad scope": "x"}}, ValueError),
        ({"scopes": {"a:b": 1}}, ValueError),
        ({"key_types": ["prod"]}, ValueError),
        ({"per_page": 0}, ValueError),
    ],
)
def test_bad_options_are_refused(
    sqlite_store: SQLAlchemyKeyStore, options: dict[str, t.Any], error: type[Exception]
) -> None:
    arguments: dict[str, t.Any] = {
        "current_owner": lambda: None,
        "login_url": "/login",
        "scopes": SCOPES,
        **options,
    }
    with pytest.raises(error):
        create_dashboard(sqlite_store, **arguments)


# -- usage ---------------------------------------------------------------------------


def record(key_id: str, when: datetime, status: int, path: str = "/v1/clients") -> UsageRecord:
    return UsageRecord(key_id, when, "GET", path, status, "127.0.0.1")


def test_the_usage_page_charts_the_requests_and_lists_the_latest(
    alice: Browser, sqlite_store: SQLAlchemyKeyStore
) -> None:
    key_id = shown_key(alice.generate())[8:22]
    now = datetime.now(UTC)
    sqlite_store.record_usage(
        [record(key_id, now - timedelta(minutes=m), s) for m, s in ((1, 200), (2, 200), (3, 404))]
        + [record(key_id, now - timedelta(hours=3), 500, "/v1/clients/<b>")]
    )
    page = alice.get(f"/{key_id}/usage").get_data(as_text=True)
    assert "4 requests in the last 48 hours: 2xx 2, 4xx 1, 5xx 1" in page
    assert "/v1/clients/&lt;b&gt;" in page
    assert page.count("<tr>") == 1 + 4
    day = alice.get(f"/{key_id}/usage?by=day").get_data(as_text=True)
    assert "4 requests in the last 30 days" in day
    listed = alice.get("/").get_data(as_text=True)
    assert "4 requests in the last 14 days" in listed


def test_usage_summary_groups_a_keys_requests_per_bucket(sqlite_store: SQLAlchemyKeyStore) -> None:
    key = sqlite_store.create_key("k")
    base = datetime(2030, 5, 1, 10, 0, tzinfo=UTC)
    sqlite_store.record_usage(
        [record(key.id, base + timedelta(minutes=m), s) for m, s in ((5, 200), (6, 401), (65, 200))]
        + [record(key.id, base - timedelta(days=2), 200)]
    )
    assert sqlite_store.usage_summary(key_id=key.id, since=base, bucket="hour") == [
        UsageBucket(base, 2, {200: 1, 401: 1}),
        UsageBucket(base + timedelta(hours=1), 1, {200: 1}),
    ]
    (day,) = sqlite_store.usage_summary(key_id=key.id, since=base, bucket="day")
    assert day == UsageBucket(datetime(2030, 5, 1, tzinfo=UTC), 3, {200: 2, 401: 1})


def test_a_chart_stacks_status_classes_scaled_to_the_busiest_bucket() -> None:
    until = datetime(2030, 5, 1, 12, 30, tzinfo=UTC)
    buckets = [
        UsageBucket(until.replace(minute=0) - timedelta(hours=1), 4, {200: 2, 302: 1, 503: 1}),
        UsageBucket(until.replace(minute=0), 2, {404: 2}),
    ]
    chart = draw(buckets, bucket="hour", count=3, width=300, height=100, until=until)
    assert [bar.title.split(": ")[1] for bar in chart.bars] == [
        "0 requests",
        "4 requests (2xx 2, 3xx 1, 5xx 1)",
        "2 requests (4xx 2)",
    ]
    empty, busy, half = chart.bars
    assert empty.segments == ()
    assert [(s.status_class, s.height) for s in busy.segments] == [
        ("2xx", 50.0), ("3xx", 25.0), ("5xx", 25.0)]  # fmt: skip
    assert busy.segments[-1].y == 0
    assert [(s.status_class, s.y, s.height) for s in half.segments] == [("4xx", 50.0, 50.0)]
    assert chart.peak == 4
    assert chart.total == 6
    assert chart.by_class == {"2xx": 2, "3xx": 1, "4xx": 2, "5xx": 1}
    assert chart.first_label == "2030-05-01 10:00 UTC"
    assert draw([], bucket="day", count=14, width=84, height=20).summary == (
        "0 requests in the last 14 days"
    )


def test_the_list_reads_usage_only_for_keys_used_in_its_window(
    alice: Browser, sqlite_store: SQLAlchemyKeyStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    used = sqlite_store.create_key("used", owner="alice")
    sqlite_store.create_key("idle", owner="alice")
    sqlite_store.record_usage([record(used.id, datetime.now(UTC), 200)])
    asked: list[str] = []
    original = SQLAlchemyKeyStore.usage_summary

    def usage_summary(self: SQLAlchemyKeyStore, **kwargs: t.Any) -> list[UsageBucket]:
        asked.append(kwargs["key_id"])
        return original(self, **kwargs)

    monkeypatch.setattr(SQLAlchemyKeyStore, "usage_summary", usage_summary)
    assert alice.get("/").status_code == 200
    assert asked == [used.id]


# -- the example app's sign-in ---------------------------------------------------------


@pytest.fixture
def example(tmp_path: Path) -> t.Iterator[FlaskClient]:
    from werkzeug.security import generate_password_hash

    from examples.flask_app import create_app

    app = create_app(
        {
            "APIKEY_DATABASE_URL": f"sqlite:///{tmp_path / 'example.db'}",
            "APIKEY_BCRYPT_ROUNDS": 4,
            "EXAMPLE_ACCOUNTS": {"alice": generate_password_hash("right")},
        }
    )
    app.extensions["apikeys"].store.create_schema()
    yield app.test_client()
    app.extensions["apikeys"].middleware.close()
    app.extensions["apikeys"].store.close()


def login(
    client: FlaskClient, password: str, next_url: str = "", token: bool = True
) -> TestResponse:
    match = TOKEN_RE.search(client.get("/login").get_data(as_text=True))
    assert match
    data = {"username": "alice", "password": password}
    if token:
        data["csrf_token"] = match.group(1)
    return client.post("/login?next=" + next_url, data=data)


@pytest.mark.parametrize(
    ("next_url", "landing"),
    [
        ("/settings/api-keys/new", "/settings/api-keys/new"),
        ("//evil.example/x", "/settings/api-keys/"),
        ("https://evil.example/", "/settings/api-keys/"),
        ("/\\evil.example", "/settings/api-keys/"),
        ("", "/settings/api-keys/"),
    ],
)
def test_the_example_signs_in_and_goes_back_only_to_its_own_pages(
    example: FlaskClient, next_url: str, landing: str
) -> None:
    response = login(example, "right", urllib.parse.quote(next_url))
    assert response.status_code == 303
    assert response.location == landing


def test_the_example_refuses_wrong_passwords_and_forms_without_their_token(
    example: FlaskClient,
) -> None:
    assert login(example, "wrong").status_code == 401
    assert login(example, "right", token=False).status_code == 400
    assert example.get("/settings/api-keys/").status_code == 303
    login(example, "right")
    page = example.get("/settings/api-keys/").get_data(as_text=True)
    assert "Signed in as <strong>alice</strong>" in page
    assert example.post("/logout").status_code == 303  # no token: still signed in
    assert example.get("/settings/api-keys/").status_code == 200
    token = TOKEN_RE.search(page)
    assert token
    example.post("/logout", data={"csrf_token": token.group(1)})
    assert example.get("/settings/api-keys/").status_code == 303
