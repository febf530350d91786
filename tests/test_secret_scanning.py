"""The secret scanning partner endpoint under a real server, with signed reports.

No request leaves the machine: each test makes its own P-256 key pair and
serves the public keys document from a local server. Reports are posted to
the blueprint served by Werkzeug's threaded server, with the API behind
ApiKeyMiddleware in the same app, so a revoked key is tried for real.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import typing as t
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta

import pytest
import sqlalchemy as sa
from flask import Flask

from apikey_middleware import ApiKeyMiddleware, LeakedKey, SQLAlchemyKeyStore
from apikey_middleware._time import utcnow
from apikey_middleware.flask.secret_scanning import create_blueprint
from apikey_middleware.hashing import KeyHasher
from apikey_middleware.keys import generate_key
from apikey_middleware.leaks import leaks_of
from apikey_middleware.schema import ApiKey

from .conftest import Statements
from .scanning import KeysServer, Signer, keys_document, post, served, snapshot, token_hash
from .servers import request

PREFIX = "/github/secret-scanning"
TOKEN_TYPE = "solarecliente_api_key"


class Endpoint:
    """A running app: the endpoint, the API behind the middleware, the hook's calls."""

    def __init__(self, base: str, store: SQLAlchemyKeyStore, keys: KeysServer) -> None:
        self.base = base
        self.url = base + PREFIX
        self.store = store
        self.keys = keys
        self.told: list[LeakedKey] = []

    def api_status(self, key: str) -> int:
        status, _, _ = request(self.base + "/v1/clients", {"Authorization": f"Bearer {key}"})
        return status

    def report(
        self, signer: Signer, items: list[dict[str, t.Any]]
    ) -> tuple[int, dict[str, str], t.Any]:
        body = json.dumps(items).encode()
        return post(self.url, body, signer.headers(body))


def item(token: str, url: str = "https://github.com/octo/repo/blob/abc/app.py") -> dict[str, str]:
    return {"token": token, "type": TOKEN_TYPE, "url": url, "source": "content"}


@pytest.fixture
def signer() -> Signer:
    return Signer()


@pytest.fixture
def keys_server(signer: Signer) -> Iterator[KeysServer]:
    server = KeysServer(keys_document(signer))
    yield server
    server.close()


EndpointFactory = Callable[..., t.ContextManager[Endpoint]]


@pytest.fixture
def endpoint(keys_server: KeysServer) -> EndpointFactory:
    @contextmanager
    def start(store: SQLAlchemyKeyStore, **options: t.Any) -> Iterator[Endpoint]:
        app = Flask(__name__)
        told: list[LeakedKey] = []
        options.setdefault("on_leak", told.append)
        options.setdefault("timeout", 1.0)
        bp = create_blueprint(store, public_keys_url=keys_server.url, **options)
        app.register_blueprint(bp, url_prefix=PREFIX)

        @app.get("/v1/clients")
        def clients() -> dict[str, bool]:
            return {"success": True}

        middleware = ApiKeyMiddleware(app.wsgi_app, store, public=[PREFIX], log_usage=False)
        app.wsgi_app = middleware  # type: ignore[method-assign]
        with served(app) as base:
            running = Endpoint(base, store, keys_server)
            running.told = told
            yield running
        middleware.close()

    return start


def test_a_signed_report_revokes_the_key_and_answers_the_labels(
    store: SQLAlchemyKeyStore, endpoint: EndpointFactory, signer: Signer
) -> None:
    leaked = store.create_key("leaky", key_type="live", owner="acme")
    other = store.create_key("other")
    with endpoint(store) as running:
        assert running.api_status(leaked.key) == 200
        look_alike = generate_key("live").key  # valid checksum, unknown id
        status, headers, labels = running.report(
            signer, [item(leaked.key), item(look_alike), item("sk_live_nonsense")]
        )
        assert status == 200
        assert headers["Content-Type"] == "application/json"
        assert labels == [
            {"token_hash": token_hash(token), "token_type": TOKEN_TYPE, "label": label}
            for token, label in (
                (leaked.key, "true_positive"),
                (look_alike, "false_positive"),
                ("sk_live_nonsense", "false_positive"),
            )
        ]
        assert running.api_status(leaked.key) == 401
        assert running.api_status(other.key) == 200
        assert running.told == [
            LeakedKey(
                key_id=leaked.id,
                key_type="live",
                owner="acme",
                name="leaky",
                url="https://github.com/octo/repo/blob/abc/app.py",
                source="content",
                revoked=True,
            )
        ]
    [leak] = leaks_of(store, leaked.id)
    assert (leak.url, leak.source, leak.action) == (
        "https://github.com/octo/repo/blob/abc/app.py",
        "content",
        "revoked",
    )
    assert abs(leak.reported_at - utcnow()) < timedelta(minutes=1)
    record = store.get_key(leaked.id)
    assert record is not None
    assert record.state() == "revoked"


def test_report_only_setting_records_the_leak_and_leaves_the_key_working(
    sqlite_store: SQLAlchemyKeyStore, endpoint: EndpointFactory, signer: Signer
) -> None:
    leaked = sqlite_store.create_key("leaky")
    with endpoint(sqlite_store, action="report") as running:
        status, _, labels = running.report(signer, [item(leaked.key)])
        assert status == 200
        assert labels[0]["label"] == "true_positive"
        assert running.api_status(leaked.key) == 200
        assert [leak.revoked for leak in running.told] == [False]
    assert [leak.action for leak in leaks_of(sqlite_store, leaked.id)] == ["reported"]


def test_a_revoked_or_expired_key_is_a_true_positive_with_nothing_to_do(
    sqlite_store: SQLAlchemyKeyStore, endpoint: EndpointFactory, signer: Signer
) -> None:
    revoked = sqlite_store.create_key("old")
    sqlite_store.revoke(revoked.id)
    expired = sqlite_store.create_key("brief", expires_at=utcnow() + timedelta(seconds=1))
    time.sleep(1.1)
    with endpoint(sqlite_store) as running:
        status, _, labels = running.report(signer, [item(revoked.key), item(expired.key)])
    assert status == 200
    assert [label["label"] for label in labels] == ["true_positive", "true_positive"]
    assert [leak.action for leak in leaks_of(sqlite_store, revoked.id)] == ["none"]
    assert [leak.action for leak in leaks_of(sqlite_store, expired.id)] == ["none"]
    assert [leak.revoked for leak in running.told] == [False, False]


def test_a_forged_key_with_a_real_id_is_a_false_positive_and_revokes_nothing(
    sqlite_store: SQLAlchemyKeyStore, endpoint: EndpointFactory, signer: Signer
) -> None:
    # Key ids are public and the checksum is not secret: anyone can publish
    # a well-formed token for a real id, to get someone's key revoked.
    victim = sqlite_store.create_key("victim", key_type="live")
    forged = generate_key("live", victim.id).key
    before = snapshot(sqlite_store)
    with endpoint(sqlite_store) as running:
        status, _, labels = running.report(signer, [item(forged)])
        assert status == 200
        assert labels[0]["label"] == "false_positive"
        assert running.api_status(victim.key) == 200
    after = snapshot(sqlite_store)
    assert after["apikey_keys"] == before["apikey_keys"]
    assert after["apikey_leaks"] == []
    assert running.told == []


Case = tuple[bytes, dict[str, str], int, str]


def _case(name: str, signer: Signer, key: str) -> Case:
    good = json.dumps([item(key)]).encode()
    stranger = Signer()

    def signed(body: bytes) -> Case:
        return body, signer.headers(body), 400, "BAD_REQUEST"

    def bad(headers: dict[str, str]) -> Case:
        return good, {**signer.headers(good), **headers}, 401, "INVALID_SIGNATURE"

    if name == "unsigned":
        return good, {}, 401, "UNAUTHORIZED"
    if name == "no-identifier":
        return good, {"Github-Public-Key-Signature": signer.sign(good)}, 401, "UNAUTHORIZED"
    if name == "bad-signature":
        return bad({"Github-Public-Key-Signature": signer.sign(good + b" ")})
    if name == "signature-not-base64":
        return bad({"Github-Public-Key-Signature": "%%%="})
    if name == "huge-signature":
        return bad({"Github-Public-Key-Signature": "A" * 5000})
    if name == "unknown-key-identifier":
        return good, stranger.headers(good), 401, "INVALID_SIGNATURE"
    if name == "signed-by-another-key":
        return bad({"Github-Public-Key-Signature": stranger.sign(good)})
    if name == "odd-identifier":
        return bad({"Github-Public-Key-Identifier": "../etc/passwd%00" * 20})
    if name == "10-MB-body":
        # Valid, signed, and naming the key: refused for its size alone.
        body = good + b" " * (10 * 1024 * 1024)
        return body, signer.headers(body), 413, "PAYLOAD_TOO_LARGE"
    if name == "1001-tokens":
        body = json.dumps([item(key)] + [item(generate_key("test").key)] * 1000).encode()
        return body, signer.headers(body), 413, "PAYLOAD_TOO_LARGE"
    if name == "not-a-list":
        return signed(json.dumps(item(key)).encode())
    if name == "not-json":
        return signed(b"[{" + good)
    if name == "token-not-a-string":
        return signed(json.dumps([{"token": [key], "type": TOKEN_TYPE}]).encode())
    if name == "no-type":
        return signed(json.dumps([{"token": key}]).encode())
    if name == "item-not-an-object":
        return signed(json.dumps([key]).encode())
    if name == "deep-nesting":
        return signed(b"[" * 100_000)
    raise AssertionError(name)


@pytest.mark.parametrize(
    "case",
    [
        "unsigned", "no-identifier", "bad-signature", "signature-not-base64", "huge-signature",
        "unknown-key-identifier", "signed-by-another-key", "odd-identifier", "10-MB-body",
        "1001-tokens", "not-a-list", "not-json", "token-not-a-string", "no-type",
        "item-not-an-object", "deep-nesting",
    ],
)  # fmt: skip
def test_a_refused_report_gets_a_clear_4xx_and_touches_nothing(
    sqlite_store: SQLAlchemyKeyStore, endpoint: EndpointFactory, signer: Signer, case: str
) -> None:
    leaked = sqlite_store.create_key("leaky", key_type="live")
    body, headers, status, code = _case(case, signer, leaked.key)
    before = snapshot(sqlite_store)
    with endpoint(sqlite_store) as running:
        statements = Statements(sqlite_store)
        answer_status, answer_headers, answer = post(running.url, body, headers)
        assert statements.seen == []
        assert running.api_status(leaked.key) == 200
    assert answer_status == status
    assert answer["success"] is False
    assert answer["error"]["code"] == code
    assert set(answer["error"]) == {"code", "message"}
    assert answer_headers["Content-Type"] == "application/json"
    assert snapshot(sqlite_store) == before
    assert running.told == []


def test_a_retried_report_gets_the_same_labels_and_changes_nothing(
    store: SQLAlchemyKeyStore, endpoint: EndpointFactory, signer: Signer
) -> None:
    leaked = store.create_key("leaky")
    other = generate_key("live").key
    body = json.dumps([item(leaked.key), item(other)]).encode()
    headers = signer.headers(body)
    with endpoint(store) as running:
        first = post(running.url, body, headers)
        assert first[0] == 200
        assert [label["label"] for label in first[2]] == ["true_positive", "false_positive"]
        after_first = snapshot(store)
        for _ in range(2):
            status, response_headers, answer = post(running.url, body, headers)
            assert status == 200
            assert answer == first[2]
            assert response_headers["Content-Type"] == "application/json"
        assert len(running.told) == 1
    assert snapshot(store) == after_first
    assert len(leaks_of(store, leaked.id)) == 1


def test_a_report_that_found_nothing_of_ours_is_not_acted_on_twice_either(
    sqlite_store: SQLAlchemyKeyStore, endpoint: EndpointFactory, signer: Signer
) -> None:
    body = json.dumps([item(generate_key("test").key)]).encode()
    with endpoint(sqlite_store) as running:
        first = post(running.url, body, signer.headers(body))
        assert first[0] == 200
        again = post(running.url, body, signer.headers(body))
        assert (again[0], again[2]) == (first[0], first[2])
        assert running.told == []


def test_the_same_report_sent_twice_at_once_acts_once(
    store: SQLAlchemyKeyStore, endpoint: EndpointFactory, signer: Signer
) -> None:
    # The program retries a slow answer: the retry may arrive while the
    # first is still being handled.
    leaked = store.create_key("leaky")
    body = json.dumps([item(leaked.key), item(leaked.key, url="https://gist.github.com/x")])
    headers = signer.headers(body.encode())
    statuses: list[int] = []
    with endpoint(store) as running:
        barrier = threading.Barrier(4)

        def send() -> None:
            barrier.wait()
            statuses.append(post(running.url, body.encode(), headers)[0])

        threads = [threading.Thread(target=send) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert len(running.told) == 1
    assert statuses == [200] * 4
    assert store.get_key(leaked.id).revoked_at is not None  # type: ignore[union-attr]
    assert sorted(leak.url for leak in leaks_of(store, leaked.id)) == [
        "https://gist.github.com/x",
        "https://github.com/octo/repo/blob/abc/app.py",
    ]


def test_tokens_are_looked_up_in_one_query(
    sqlite_store: SQLAlchemyKeyStore, endpoint: EndpointFactory, signer: Signer
) -> None:
    keys = [sqlite_store.create_key(f"k{n}") for n in range(5)]
    tokens = [key.key for key in keys] + [generate_key("live").key for _ in range(20)]
    with endpoint(sqlite_store, action="report") as running:
        statements = Statements(sqlite_store)
        status, _, labels = running.report(signer, [item(token) for token in tokens])
        assert status == 200
        assert statements.key_reads == 1
    assert [label["label"] for label in labels] == ["true_positive"] * 5 + ["false_positive"] * 20


def test_bcrypt_checks_per_report_are_bounded_active_keys_first(
    sqlite_store: SQLAlchemyKeyStore,
    endpoint: EndpointFactory,
    signer: Signer,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    revoked = sqlite_store.create_key("old")
    sqlite_store.revoke(revoked.id)
    active = sqlite_store.create_key("leaky")
    legacy = sqlite_store.create_key("made by 0.1.0")
    with sqlite_store.engine.begin() as connection:
        connection.execute(sa.update(ApiKey).where(ApiKey.id == legacy.id).values(key_check=None))
    forged = [generate_key("test", sqlite_store.create_key(f"v{n}").id).key for n in range(3)]
    bcrypt_runs: list[str] = []
    verify = KeyHasher.verify

    def counted_bcrypt(self: KeyHasher, key: str, hashed: str) -> bool:
        bcrypt_runs.append(key)
        return verify(self, key, hashed)

    monkeypatch.setattr(KeyHasher, "verify", counted_bcrypt)
    tokens = [revoked.key, forged[0], active.key, forged[1], forged[2], legacy.key]
    with endpoint(sqlite_store, max_checks=1) as running:
        status, _, labels = running.report(signer, [item(token) for token in tokens])
        assert running.api_status(active.key) == 401
    assert status == 200
    # The look-alikes are refuted by their rows' check values, for one HMAC
    # each. The one bcrypt goes to a key of an active row, in report order;
    # past the bound the revoked key's check value confirms it, and the key
    # of a row made before check values is left unchecked.
    assert bcrypt_runs == [active.key]
    assert {label["token_hash"]: label["label"] for label in labels} == {
        token_hash(forged[0]): "false_positive",
        token_hash(forged[1]): "false_positive",
        token_hash(forged[2]): "false_positive",
        token_hash(active.key): "true_positive",
        token_hash(revoked.key): "true_positive",
    }
    assert "1 token(s)" in caplog.text
    assert "left unchecked" in caplog.text


def test_look_alikes_cannot_keep_a_real_leaked_key_from_revocation(
    sqlite_store: SQLAlchemyKeyStore, endpoint: EndpointFactory, signer: Signer
) -> None:
    leaked = sqlite_store.create_key("leaky")
    look_alikes = [generate_key("test", leaked.id).key for _ in range(40)]
    with endpoint(sqlite_store) as running:
        status, _, labels = running.report(signer, [item(t) for t in [*look_alikes, leaked.key]])
        assert running.api_status(leaked.key) == 401
    assert status == 200
    assert len(labels) == 41
    assert {label["token_hash"]: label["label"] for label in labels}[token_hash(leaked.key)] == (
        "true_positive"
    )


def test_report_text_is_recorded_masked_and_printable(
    store: SQLAlchemyKeyStore, endpoint: EndpointFactory, signer: Signer
) -> None:
    leaked = store.create_key("leaky")
    other = store.create_key("other")
    url = f"https://example.com/\u00e9\U0001f600/{other.key}?x=\x00"
    with endpoint(store) as running:
        status, _, _ = running.report(signer, [item(leaked.key, url=url)])
        assert status == 200
        assert running.api_status(leaked.key) == 401
        told = running.told
    [record] = leaks_of(store, leaked.id)
    assert record.url == told[0].url
    assert other.key not in record.url
    assert "(an API key, not shown)" in record.url
    assert record.url.isascii()
    assert record.url.isprintable()
    assert "%C3%A9%F0%9F%98%80" in record.url


def test_a_token_that_is_not_unicode_text_is_refused_before_anything_is_done(
    sqlite_store: SQLAlchemyKeyStore, endpoint: EndpointFactory, signer: Signer
) -> None:
    leaked = sqlite_store.create_key("leaky")
    body = json.dumps([item(leaked.key), item("\ud800")]).encode()
    with endpoint(sqlite_store) as running:
        status, _, answer = post(running.url, body, signer.headers(body))
        assert running.api_status(leaked.key) == 200
    assert status == 400
    assert answer["error"]["code"] == "BAD_REQUEST"
    assert leaks_of(sqlite_store, leaked.id) == []


def test_a_keys_server_that_sends_slowly_is_given_up_on_within_the_timeout(
    sqlite_store: SQLAlchemyKeyStore,
    endpoint: EndpointFactory,
    signer: Signer,
    keys_server: KeysServer,
) -> None:
    keys_server.mode = "trickle"  # each byte well within the socket timeout
    with endpoint(sqlite_store, timeout=1.0) as running:
        started = time.monotonic()
        status, _, _ = running.report(signer, [item(generate_key("test").key)])
        assert status == 503
        assert time.monotonic() - started < 5


def test_a_failing_hook_is_logged_and_the_answer_stands(
    sqlite_store: SQLAlchemyKeyStore,
    endpoint: EndpointFactory,
    signer: Signer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    leaked = sqlite_store.create_key("leaky")

    def broken(leak: LeakedKey) -> None:
        raise RuntimeError("mail server down")

    with endpoint(sqlite_store, on_leak=broken) as running:
        status, _, labels = running.report(signer, [item(leaked.key)])
        assert running.api_status(leaked.key) == 401
    assert status == 200
    assert labels[0]["label"] == "true_positive"
    assert "on_leak hook failed" in caplog.text
    assert "mail server down" in caplog.text


def test_no_key_reaches_a_response_a_log_line_or_the_hook(
    sqlite_store: SQLAlchemyKeyStore,
    endpoint: EndpointFactory,
    signer: Signer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    leaked = sqlite_store.create_key("leaky")
    forged = generate_key("live", sqlite_store.create_key("victim").id).key
    seen = []
    with endpoint(sqlite_store) as running:
        for items in ([item(leaked.key), item(forged)], [item(leaked.key)], {"token": forged}):
            seen.append(repr(running.report(signer, items)))  # type: ignore[arg-type]
        seen.append(repr(running.told))
    seen.append(caplog.text)
    seen.append(repr(snapshot(sqlite_store)))
    for key in (leaked.key, forged):
        for part in (key, key[23:]):
            assert part not in "\n".join(seen)


def test_keys_that_cannot_be_fetched_fail_closed_with_503(
    sqlite_store: SQLAlchemyKeyStore,
    endpoint: EndpointFactory,
    signer: Signer,
    keys_server: KeysServer,
) -> None:
    leaked = sqlite_store.create_key("leaky")
    keys_server.mode = "fail"
    before = snapshot(sqlite_store)
    with endpoint(sqlite_store, retry_interval=0.5) as running:
        statements = Statements(sqlite_store)
        status, headers, answer = running.report(signer, [item(leaked.key)])
        assert status == 503
        assert answer["error"]["code"] == "SERVICE_UNAVAILABLE"
        assert headers["Retry-After"] == "0" or int(headers["Retry-After"]) >= 0
        # A flood meanwhile does not make it fetch again.
        for _ in range(10):
            assert running.report(signer, [item(leaked.key)])[0] == 503
        assert keys_server.hits == 1
        assert statements.seen == []
        assert snapshot(sqlite_store) == before
        keys_server.mode = "serve"
        time.sleep(0.6)
        assert running.report(signer, [item(leaked.key)])[0] == 200
        assert keys_server.hits == 2


def test_a_keys_server_that_hangs_is_given_up_on_within_the_timeout(
    sqlite_store: SQLAlchemyKeyStore,
    endpoint: EndpointFactory,
    signer: Signer,
    keys_server: KeysServer,
) -> None:
    keys_server.mode = "hang"
    with endpoint(sqlite_store, timeout=0.5) as running:
        started = time.monotonic()
        status, _, _ = running.report(signer, [item(generate_key("test").key)])
        assert status == 503
        assert time.monotonic() - started < 5


@pytest.mark.parametrize(
    "document",
    [
        pytest.param(b"{" * 70_000, id="oversized"),
        pytest.param(b"[" * 60_000, id="deeply-nested"),
        pytest.param(b'{"public_keys": "nope"}', id="no-list"),
        pytest.param(b"not json", id="not-json"),
        pytest.param(b'{"public_keys": [{"key_identifier": "a", "key": "junk"}]}', id="bad-pem"),
    ],
)
def test_a_bad_keys_document_fails_closed(
    sqlite_store: SQLAlchemyKeyStore,
    endpoint: EndpointFactory,
    signer: Signer,
    keys_server: KeysServer,
    document: bytes,
) -> None:
    keys_server.document = document
    with endpoint(sqlite_store) as running:
        assert running.report(signer, [item(generate_key("test").key)])[0] == 503
        assert running.report(signer, [item(generate_key("test").key)])[0] == 503
    assert keys_server.hits == 1  # a failed fetch is not tried again at once


def test_a_keys_document_with_only_other_curves_fails_closed(
    sqlite_store: SQLAlchemyKeyStore,
    endpoint: EndpointFactory,
    signer: Signer,
    keys_server: KeysServer,
) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    other = ec.generate_private_key(ec.SECP384R1()).public_key()
    pem = other.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()
    keys_server.document = json.dumps(
        {"public_keys": [{"key_identifier": signer.identifier, "key": pem, "is_current": True}]}
    ).encode()
    with endpoint(sqlite_store) as running:
        assert running.report(signer, [item(generate_key("test").key)])[0] == 503


def test_unknown_key_identifiers_cannot_make_it_fetch_per_request(
    sqlite_store: SQLAlchemyKeyStore,
    endpoint: EndpointFactory,
    signer: Signer,
    keys_server: KeysServer,
) -> None:
    body = json.dumps([item(generate_key("test").key)]).encode()
    with endpoint(sqlite_store, refetch_interval=60) as running:
        assert post(running.url, body, signer.headers(body))[0] == 200
        for _ in range(20):
            stranger = Signer()
            assert post(running.url, body, stranger.headers(body))[0] == 401
        # Fetched once: the refetch interval has not passed.
        assert keys_server.hits == 1


def test_a_new_signing_key_is_fetched_when_first_seen(
    sqlite_store: SQLAlchemyKeyStore,
    endpoint: EndpointFactory,
    signer: Signer,
    keys_server: KeysServer,
) -> None:
    rotated = Signer()
    with endpoint(sqlite_store, refetch_interval=0.5) as running:
        body = json.dumps([item(generate_key("test").key)]).encode()
        assert post(running.url, body, signer.headers(body))[0] == 200
        keys_server.document = keys_document(rotated, signer)
        body = json.dumps([item(generate_key("live").key)]).encode()
        # Within the refetch interval of the last fetch: not known yet.
        assert post(running.url, body, rotated.headers(body))[0] == 401
        time.sleep(0.6)
        assert post(running.url, body, rotated.headers(body))[0] == 200
        # The older key still signs: the retry is answered again.
        assert post(running.url, body, signer.headers(body))[0] == 200
        assert keys_server.hits == 2


def test_other_methods_get_a_json_405(
    sqlite_store: SQLAlchemyKeyStore, endpoint: EndpointFactory
) -> None:
    with endpoint(sqlite_store) as running:
        status, headers, answer = post(running.url, b"", method="GET")
        assert running.keys.hits == 0
    assert status == 405
    assert headers["Allow"] == "POST"
    assert answer["error"]["code"] == "METHOD_NOT_ALLOWED"


def test_bad_settings_are_refused(sqlite_store: SQLAlchemyKeyStore) -> None:
    with pytest.raises(ValueError, match="action"):
        create_blueprint(sqlite_store, action="delete")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="http"):
        create_blueprint(sqlite_store, public_keys_url="file:///etc/passwd")
    with pytest.raises(ValueError, match="max_checks"):
        create_blueprint(sqlite_store, max_checks=0)
    with pytest.raises(ValueError, match="timeout"):
        create_blueprint(sqlite_store, timeout=-1)
    with pytest.raises(TypeError, match="on_leak"):
        create_blueprint(sqlite_store, on_leak="print")  # type: ignore[arg-type]
