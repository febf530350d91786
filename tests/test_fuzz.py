"""Property tests: hostile input only ever gets the SPEC's answers.

``APIKEY_FUZZ_EXAMPLES`` sets how many examples each property runs (CI:
2000; ``make fuzz``: 100000). Each test prints how many it ran.
"""

from __future__ import annotations

import json
import os
import re
import string
import typing as t
import unicodedata
from collections.abc import Iterable, Iterator
from urllib.parse import parse_qs

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from werkzeug.test import run_wsgi_app

from apikey_middleware import ApiKeyMiddleware, FailureThrottle, IssuedKey, SQLAlchemyKeyStore
from apikey_middleware.cli import parse_duration
from apikey_middleware.keys import generate_key, parse_key
from apikey_middleware.principal import scope_granted

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


PATHS = [
    "/v1/clients", "/v1/clients/", "/v1//clients", "v1/clients", "/v1/clients/7", "/v1/",
    "/health", "/health/", "//health", "health", "/elsewhere", "/",
    "/v1/./clients", "/v1/x/../clients", "/health/..", "/static/%2e%2e/v1", "/v1%2fclients",
    "/v1/..;/clients", "/v1\\..\\clients", "/v1/clients\x00", "/v1/caf\xc3\xa9", "/.well-known/x",
    "/v1/clients;x", "/V1/Clients", "/HEALTH", "/health;x", "/v1/%63lients", "/static/x.",
    "/v1/\xef\xbc\x8e\xef\xbc\x8e/x",
]  # fmt: skip
METHODS = ["GET", "POST", "OPTIONS", "DELETE", "HEAD", "get", "PATCH", "PROPFIND", "G" * 40, ""]
OVERRIDES = ["DELETE", "POST", "GET", "", "D E L", "delete", " PATCH ", "PROPFIND"]
STANDARD_METHODS = {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "CONNECT"}


class Setup(t.NamedTuple):
    keys: list[IssuedKey]
    revoked: str
    #: by (preflight, store down, throttle)
    middlewares: dict[tuple[bool, bool, bool], ApiKeyMiddleware]


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    folder = tmp_path_factory.mktemp("fuzz")
    store = SQLAlchemyKeyStore(f"sqlite:///{folder / 'keys.db'}", bcrypt_rounds=TEST_ROUNDS)
    store.create_schema()
    keys = [
        store.create_key("reader", scopes=["clients:read"]),
        store.create_key("live", key_type="live", scopes=["*"]),
        store.create_key("nobody", key_type="live"),
    ]
    revoked = store.create_key("revoked", scopes=["*"])
    store.revoke(revoked.id)
    keys.append(revoked)
    broken = folder / "broken.db"
    broken.write_bytes(b"this is not a database" * 500)
    down = SQLAlchemyKeyStore(f"sqlite:///{broken}", bcrypt_rounds=TEST_ROUNDS)
    rules = [("POST", "/v1/clients", "clients:write"), ("GET", "/v1/<path:rest>", "clients:read")]
    middlewares = {
        (preflight, is_down, throttled): ApiKeyMiddleware(
            app,
            down if is_down else store,
            rules=rules,
            public=["/health"],
            log_usage=False,
            preflight=preflight,
            # Short windows: the fuzzer meets 429s as well.
            throttle=FailureThrottle(limit=5, window=0.05) if throttled else None,
        )
        for preflight in (False, True)
        for is_down in (False, True)
        for throttled in (False, True)
    }
    yield Setup(keys, revoked.key, middlewares)
    store.close()
    down.close()


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


# -- the oracle: the answer the SPEC gives each request, written apart from
# the code under test ----------------------------------------------------

_TOKEN_CHARS = set("!#$%&'*+.^_`|~-" + string.ascii_letters + string.digits)


def _method_ok(method: str) -> bool:
    return 1 <= len(method) <= 32 and set(method) <= _TOKEN_CHARS


def _path_ok(raw: str) -> bool:
    if len(raw) > 8192:
        return False
    path = raw.encode("latin-1").decode("utf-8", "replace")
    if any(ord(char) < 0x20 or ord(char) == 0x7F or char == "\\" for char in path):
        return False
    if re.search("%[0-9a-fA-F][0-9a-fA-F]", path):
        return False
    if unicodedata.normalize("NFKC", path) != path:
        return False
    segments = path.split("/")
    if any(segment.endswith((".", " ")) for segment in segments):
        return False
    return not any(segment.split(";")[0] in (".", "..") for segment in segments)


def _spellings(raw: str) -> set[str]:
    path = raw.encode("latin-1").decode("utf-8", "replace")
    forms = {path, re.sub(";[^/]*", "", path)}
    return forms | {form.lower() for form in forms}


def _normal(path: str) -> str:
    return "/" + path.lstrip("/")


ROUTED = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE")


def _scopes_of(method: str, form: str) -> set[str]:
    path = re.sub("/+", "/", _normal(form))
    write = path in ("/v1/clients", "/v1/clients/")
    read = path.startswith("/v1/") and len(path) > 4
    if method == "POST" and write:
        return {"clients:write"}
    if method in ("GET", "HEAD") and read:
        return {"clients:read"}
    if method not in ROUTED:  # a method no rule names: every rule of the path
        return ({"clients:write"} if write else set()) | ({"clients:read"} if read else set())
    return set()


def _scopes(method: str, raw: str) -> set[str]:
    return set().union(*(_scopes_of(method, form) for form in _spellings(raw)))


def _public(raw: str) -> bool:
    return all("//" not in form and _normal(form) == "/health" for form in _spellings(raw))


def _token(header: str | None) -> str | None:
    if header is None:
        return None
    match = re.fullmatch(r"[Bb][Ee][Aa][Rr][Ee][Rr] +(.+)", header.strip(" \t"), re.DOTALL)
    return None if match is None else match.group(1)


def expected(
    setup: Setup,
    environ: dict[str, t.Any],
    preflight: bool,
    down: bool,
) -> tuple[int, str | None]:
    """(status, error code or None for the app's 200)."""
    raw_method = environ["REQUEST_METHOD"]
    method = raw_method.upper()
    raw_path = environ["PATH_INFO"]
    if not _method_ok(method) or not _path_ok(raw_path):
        return 400, "BAD_REQUEST"
    if _public(raw_path):
        return 200, None
    needed = _scopes(method, raw_path)
    overrides = [environ[name] for name in ("HTTP_X_HTTP_METHOD_OVERRIDE",) if name in environ]
    overrides += parse_qs(environ["QUERY_STRING"], keep_blank_values=True).get("_method", [])
    # One override at most, naming a standard method.
    if len(overrides) > 1:
        return 400, "BAD_REQUEST"
    for override in overrides:
        other = override.strip().upper()
        if other not in STANDARD_METHODS:
            return 400, "BAD_REQUEST"
        needed |= _scopes(other, raw_path)
    if (
        preflight
        and raw_method == "OPTIONS"
        and "HTTP_ORIGIN" in environ
        and "HTTP_ACCESS_CONTROL_REQUEST_METHOD" in environ
    ):
        return 200, None
    token = _token(environ.get("HTTP_AUTHORIZATION"))
    if token is None:
        return 401, "UNAUTHORIZED"
    issued = next((key for key in setup.keys if key.key == token), None)
    if issued is None:
        return 401, "INVALID_API_KEY"
    if down:
        return 503, "SERVICE_UNAVAILABLE"
    if token == setup.revoked:
        return 401, "INVALID_API_KEY"
    if not all(scope_granted(frozenset(issued.record.scopes), scope) for scope in needed):
        return 403, "FORBIDDEN"
    return 200, None


def draw_environ(setup: Setup, data: st.DataObject) -> dict[str, t.Any]:
    key = setup.keys[data.draw(st.integers(0, len(setup.keys) - 1))].key
    authorization: str | None
    if data.draw(st.booleans()):
        # Half the time a well-formed request with a real key, so that the
        # answers that need one (200, 403, 503) are met as often as refusals.
        authorization = f"Bearer {key}"
        method = data.draw(st.sampled_from(["GET", "POST", "HEAD", "DELETE"]))
        path = data.draw(st.sampled_from(["/v1/clients", "/v1/clients/7", "/v1//clients", "/x"]))
    else:
        authorization = data.draw(
            st.one_of(
                st.none(),
                LATIN1,
                st.builds(lambda scheme, token: f"{scheme}{token}", st.sampled_from(
                    ["Bearer ", "bearer  ", "BEARER\t", "Basic ", "Bearer", "", " Bearer "]),
                    LATIN1),
                st.just(mutate(key, data)).map(lambda token: f"Bearer {token}"),
            )
        )  # fmt: skip
        method = data.draw(st.one_of(st.sampled_from(METHODS), LATIN1))
        path = data.draw(st.one_of(st.sampled_from(PATHS), LATIN1))
    environ: dict[str, t.Any] = {
        "REQUEST_METHOD": method,
        "PATH_INFO": path,
        "QUERY_STRING": data.draw(
            st.one_of(
                LATIN1,
                st.sampled_from(
                    [
                        "_method=DELETE",
                        "_method=post",
                        "_method=x y",
                        "%5Fmethod=GET",
                        "_method=a&_method=b",
                    ]
                ),
            )
        ),
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
    override = data.draw(st.one_of(st.none(), st.sampled_from(OVERRIDES), LATIN1))
    if override is not None:
        environ["HTTP_X_HTTP_METHOD_OVERRIDE"] = override
    return environ


def answer(
    middleware: ApiKeyMiddleware, environ: dict[str, t.Any]
) -> tuple[int, bytes, dict[str, str]]:
    body_iter, status, headers = run_wsgi_app(middleware, dict(environ), buffered=True)
    return int(status.split()[0]), b"".join(body_iter), dict(headers)


def check_answer(
    setup: Setup,
    environ: dict[str, t.Any],
    got: tuple[int, bytes, dict[str, str]],
    want: tuple[int, str | None],
) -> None:
    status, body, headers = got
    assert status == want[0], (environ, body)
    if want[1] is None:
        assert body == b"app"  # the app's own answer, whatever the method
        return
    assert headers["Cache-Control"] == "no-store"
    if environ["REQUEST_METHOD"] == "HEAD":  # the same answer, without its body
        assert body == b""
        return
    document = json.loads(body)
    assert document["success"] is False
    assert document["error"]["code"] == want[1]
    assert document["error"] in ERROR_BODIES[status]
    for issued in setup.keys:
        assert issued.key not in body.decode()


@FUZZ
@given(data=st.data())
def test_middleware_gives_each_request_the_spec_answer(setup: Setup, data: st.DataObject) -> None:
    counter["middleware"] += 1
    environ = draw_environ(setup, data)
    preflight = data.draw(st.booleans())
    down = data.draw(st.booleans())
    want = expected(setup, environ, preflight, down)
    event(f"expected {want[0]}")  # --hypothesis-show-statistics: which answers were met
    seen_statuses.add(want[0])
    got = answer(setup.middlewares[preflight, down, False], environ)
    check_answer(setup, environ, got, want)


@FUZZ
@given(data=st.data())
def test_throttling_only_turns_invalid_keys_into_429(setup: Setup, data: st.DataObject) -> None:
    counter["throttled"] += 1
    environ = draw_environ(setup, data)
    want = expected(setup, environ, False, False)
    got = answer(setup.middlewares[False, False, True], environ)
    if got[0] == 429:
        # A valid key is never shut out by other requests' failures.
        assert want == (401, "INVALID_API_KEY"), environ
        assert got[2]["Retry-After"].isdigit()
        if environ["REQUEST_METHOD"] != "HEAD":
            assert json.loads(got[1])["error"] == ERROR_BODIES[429][0]
        return
    check_answer(setup, environ, got, want)


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


counter: dict[str, int] = {"middleware": 0, "throttled": 0, "parser": 0, "duration": 0}
seen_statuses: set[int] = set()


@pytest.fixture(scope="module", autouse=True)
def report_counts() -> Iterator[None]:
    yield
    print(f"\nfuzz examples run: {counter}; answers expected: {sorted(seen_statuses)}")
    if counter["middleware"] >= EXAMPLES:
        # A fuzzer that never meets an answer cannot check it.
        assert seen_statuses >= {200, 400, 401, 403, 503}, seen_statuses
