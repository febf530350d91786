"""Property tests: hostile input only ever gets the SPEC's answers.

``APIKEY_FUZZ_EXAMPLES`` sets how many examples each property runs (CI:
2000; ``make fuzz``: 100000). Each test prints how many it ran.
"""

from __future__ import annotations

import json
import os
import typing as t
from collections.abc import Iterable, Iterator

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from werkzeug.test import run_wsgi_app

from apikey_middleware import ApiKeyMiddleware, FailureThrottle, IssuedKey, SQLAlchemyKeyStore
from apikey_middleware.cli import parse_duration
from apikey_middleware.keys import generate_key, parse_key

from .conftest import TEST_ROUNDS

if t.TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIEnvironment

pytestmark = pytest.mark.fuzz

EXAMPLES = int(os.environ.get("APIKEY_FUZZ_EXAMPLES", "2000"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    database=None,
)
LATIN1 = st.text(st.characters(max_codepoint=255), max_size=200)
ERROR_BODIES = {
    400: [{"code": "BAD_REQUEST", "message": "The request path or method is not valid"}],
    401: [
        {"code": "UNAUTHORIZED", "message": "No API key provided"},
        {
            "code": "INVALID_API_KEY",
            "message": "The provided API key is invalid or has been revoked",
        },
    ],
    403: [
        {
            "code": "FORBIDDEN",
            "message": "Your API key does not have permission to perform this action",
        }
    ],
    429: [
        {
            "code": "TOO_MANY_REQUESTS",
            "message": "Too many failed authentication attempts, please retry later",
        }
    ],
    503: [
        {
            "code": "SERVICE_UNAVAILABLE",
            "message": "API key verification is temporarily unavailable, please retry later",
        }
    ],
}


def app(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"app"]


class Setup(t.NamedTuple):
    middleware: ApiKeyMiddleware
    keys: list[IssuedKey]


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    path = tmp_path_factory.mktemp("fuzz") / "keys.db"
    store = SQLAlchemyKeyStore(f"sqlite:///{path}", bcrypt_rounds=TEST_ROUNDS)
    store.create_schema()
    keys = [
        store.create_key("reader", scopes=["clients:read"]),
        store.create_key("live", key_type="live", scopes=["*"]),
    ]
    revoked = store.create_key("revoked")
    store.revoke(revoked.id)
    keys.append(revoked)
    middleware = ApiKeyMiddleware(
        app,
        store,
        rules=[
            ("POST", "/v1/clients", "clients:write"),
            ("GET", "/v1/<path:rest>", "clients:read"),
        ],
        public=["/health"],
        log_usage=False,
        # Short windows, few addresses: the fuzzer meets 429s as well.
        throttle=FailureThrottle(limit=5, window=0.05),
    )
    yield Setup(middleware, keys)
    store.close()


def mutate(key: str, data: st.DataObject) -> str:
    kind = data.draw(st.sampled_from(["as-is", "char", "cut", "extend", "case"]))
    if kind == "char":
        index = data.draw(st.integers(0, len(key) - 1))
        return key[:index] + data.draw(st.characters(max_codepoint=255)) + key[index + 1 :]
    if kind == "cut":
        return key[: data.draw(st.integers(0, len(key)))]
    if kind == "extend":
        return key + data.draw(LATIN1)
    if kind == "case":
        return key.swapcase()
    return key


@FUZZ
@given(data=st.data())
def test_middleware_only_gives_spec_answers(setup: Setup, data: st.DataObject) -> None:
    counter["middleware"] += 1
    key = setup.keys[data.draw(st.integers(0, len(setup.keys) - 1))].key
    authorization = data.draw(
        st.one_of(
            st.none(),
            LATIN1,
            st.builds(lambda scheme, token: f"{scheme}{token}", st.sampled_from(
                ["Bearer ", "bearer  ", "BEARER\t", "Basic ", "Bearer", ""]), LATIN1),
            st.just(mutate(key, data)).map(lambda token: f"Bearer {token}"),
        )
    )  # fmt: skip
    environ: dict[str, t.Any] = {
        "REQUEST_METHOD": data.draw(
            st.one_of(st.sampled_from(["GET", "POST", "OPTIONS", "DELETE", "HEAD"]), LATIN1)
        ),
        "PATH_INFO": data.draw(st.one_of(st.sampled_from(["/v1/clients", "/health"]), LATIN1)),
        "QUERY_STRING": data.draw(LATIN1),
        "SERVER_NAME": "localhost",
        "SERVER_PORT": "80",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "wsgi.url_scheme": "http",
    }
    remote = data.draw(st.one_of(st.none(), st.sampled_from(["203.0.113.1", "::1"]), LATIN1))
    if remote is not None:
        environ["REMOTE_ADDR"] = remote
    if authorization is not None:
        environ["HTTP_AUTHORIZATION"] = authorization
    for header in data.draw(
        st.sets(st.sampled_from(["HTTP_ORIGIN", "HTTP_ACCESS_CONTROL_REQUEST_METHOD"]))
    ):
        environ[header] = data.draw(LATIN1)
    body_iter, status, headers = run_wsgi_app(setup.middleware, environ, buffered=True)
    body = b"".join(body_iter)
    code = int(status.split()[0])
    event(f"status {code}")  # --hypothesis-show-statistics: which answers were met
    if code == 200:
        assert body == b"app"
        return
    assert code in ERROR_BODIES, status
    if environ["REQUEST_METHOD"] == "HEAD":  # the same answer, without its body
        assert body == b""
        return
    document = json.loads(body)
    assert document["success"] is False
    assert document["error"] in ERROR_BODIES[code]
    assert headers["Cache-Control"] == "no-store"
    for issued in setup.keys:
        assert issued.key not in body.decode()


@FUZZ
@given(data=st.data())
def test_key_parser_never_raises_and_accepts_only_whole_keys(data: st.DataObject) -> None:
    counter["parser"] += 1
    key = generate_key(data.draw(st.sampled_from(["test", "live"]))).key
    token = data.draw(st.one_of(LATIN1, st.just(mutate(key, data))))
    parsed = parse_key(token)
    if parsed is not None:
        assert parsed.key == token
        assert token == key  # a changed key passing its checksum would be news


@FUZZ
@given(text=st.one_of(LATIN1, st.from_regex(r"(?:[0-9]{1,4}[wdhms]){1,3}", fullmatch=True)))
def test_duration_parser_raises_only_value_error(text: str) -> None:
    counter["duration"] += 1
    try:
        value = parse_duration(text)
    except ValueError:
        return
    assert value.total_seconds() >= 0


counter: dict[str, int] = {"middleware": 0, "parser": 0, "duration": 0}


@pytest.fixture(scope="module", autouse=True)
def report_counts() -> Iterator[None]:
    yield
    print(f"\nfuzz examples run: {counter}")
