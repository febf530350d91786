"""The package's exceptions, under two roots.

- :class:`ApiKeyError`: why a request was refused, and the exact response
  it gets. Its ``code``, ``status`` and ``message`` are the public contract;
  the instance is itself a WSGI application that sends that response, like
  Werkzeug's HTTP exceptions, so the middleware and the Flask decorator
  answer byte for byte alike.

  - :class:`BadRequestError` (400), :class:`MissingKeyError` (401),
    :class:`InvalidKeyError` (401; :class:`RejectedKeyError` for a known
    id), :class:`ForbiddenError` (403), :class:`TooManyRequestsError`
    (429, failed attempts), :class:`RateLimitedError` (429, a key over its
    rate limit), :class:`ServiceUnavailableError` (503).

- :class:`StoreError`: what a key store reports, knowing nothing of HTTP.

  - :class:`StoreUnavailableError`: the store could not answer; the
    middleware turns it into a :class:`ServiceUnavailableError`.
  - :class:`KeyNotFoundError` (also a :class:`LookupError`): no key has
    that id.

A key store's ``authenticate`` raises :class:`InvalidKeyError` for a key it
refuses and :class:`StoreUnavailableError` when it cannot tell. No message
or attribute here ever contains a key.
"""

from __future__ import annotations

import functools
import json
import typing as t
from collections.abc import Iterable

from werkzeug.http import HTTP_STATUS_CODES

from .keys import holds_key

if t.TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIEnvironment
    from werkzeug.wrappers import Response

    from .ratelimit import Quota

REALM = "api"


@functools.cache
def _body(code: str, message: str) -> bytes:
    return json.dumps({"success": False, "error": {"code": code, "message": message}}).encode()


def _bearer_challenge(**params: str) -> str:
    # RFC 6750 §3 writes every attribute as a quoted-string; Werkzeug's
    # dump_header quotes only where a token would not do, so it is built
    # here. The values never hold quotes or backslashes (scopes cannot).
    return "Bearer " + ", ".join(f'{name}="{value}"' for name, value in params.items())


class ApiKeyError(Exception):
    """A request that cannot go on: the root of every refusal."""

    #: The ``error.code`` of the JSON body, such as ``UNAUTHORIZED``.
    code: t.ClassVar[str]
    #: The HTTP status code.
    status: t.ClassVar[int]
    #: The ``error.message`` of the JSON body; also ``str()``.
    message: t.ClassVar[str]

    def __init__(self) -> None:
        super().__init__(self.message)

    def __str__(self) -> str:
        return self.message

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"

    @property
    def body(self) -> bytes:
        """The JSON body of the response."""
        return _body(self.code, self.message)

    def get_headers(self) -> list[tuple[str, str]]:
        """The response headers, ``Content-Type`` included."""
        return [("Content-Type", "application/json"), ("Cache-Control", "no-store")]

    def get_response(self) -> Response:
        """Build the response this refusal is answered with."""
        from werkzeug.wrappers import Response

        return Response(self.body, self.status, self.get_headers())

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        # What get_response() would send, without building a Response: the
        # error paths are what a flood of bad keys exercises.
        body = self.body
        start_response(
            f"{self.status} {HTTP_STATUS_CODES[self.status].upper()}",
            [*self.get_headers(), ("Content-Length", str(len(body)))],
        )
        return [] if environ.get("REQUEST_METHOD") == "HEAD" else [body]


class MissingKeyError(ApiKeyError):
    """No ``Authorization: Bearer`` key came with the request."""

    code = "UNAUTHORIZED"
    status = 401
    message = "No API key provided"
    _challenge = _bearer_challenge(realm=REALM)

    def get_headers(self) -> list[tuple[str, str]]:
        return [*super().get_headers(), ("WWW-Authenticate", self._challenge)]


class InvalidKeyError(ApiKeyError):
    """The key is malformed, unknown, wrong, revoked or expired.

    Which of these it was is deliberately not recorded: the client must not
    be able to tell them apart.
    """

    code = "INVALID_API_KEY"
    status = 401
    message = "The provided API key is invalid or has been revoked"
    _challenge = _bearer_challenge(realm=REALM, error="invalid_token")

    def get_headers(self) -> list[tuple[str, str]]:
        return [*super().get_headers(), ("WWW-Authenticate", self._challenge)]


class RejectedKeyError(InvalidKeyError):
    """An invalid key whose id the store knows.

    The answer is the same as for any invalid key; the id is kept only so
    that the attempt can be written to that key's usage log.
    """

    def __init__(self, key_id: str) -> None:
        super().__init__()
        #: The public id of the refused key.
        self.key_id = key_id

    def __repr__(self) -> str:
        return f"RejectedKeyError(key_id={self.key_id!r})"


class ForbiddenError(ApiKeyError):
    """A valid key that lacks a needed scope or is of a refused type."""

    code = "FORBIDDEN"
    status = 403
    message = "Your API key does not have permission to perform this action"

    def __init__(self, scopes: Iterable[str] = ()) -> None:
        super().__init__()
        #: The scopes the request needed, named in the ``WWW-Authenticate``
        #: header (RFC 6750 §3).
        self.scopes: tuple[str, ...] = tuple(scopes)

    def __repr__(self) -> str:
        return f"ForbiddenError(scopes={self.scopes!r})"

    def get_headers(self) -> list[tuple[str, str]]:
        params = {"realm": REALM, "error": "insufficient_scope"}
        if self.scopes:
            params["scope"] = " ".join(self.scopes)
        return [*super().get_headers(), ("WWW-Authenticate", _bearer_challenge(**params))]


class BadRequestError(ApiKeyError):
    """A path or method that cannot be judged safely (see :mod:`~apikey_middleware.rules`)."""

    code = "BAD_REQUEST"
    status = 400
    message = "The request path or method is not valid"


class _RetryLaterError(ApiKeyError):
    def __init__(self, retry_after: int) -> None:
        super().__init__()
        #: Seconds the client should wait, sent as ``Retry-After``.
        self.retry_after = retry_after

    def __repr__(self) -> str:
        return f"{type(self).__name__}(retry_after={self.retry_after})"

    def get_headers(self) -> list[tuple[str, str]]:
        return [*super().get_headers(), ("Retry-After", str(self.retry_after))]


class ServiceUnavailableError(_RetryLaterError):
    """The key store could not answer, so the request is refused (fail closed)."""

    code = "SERVICE_UNAVAILABLE"
    status = 503
    message = "API key verification is temporarily unavailable, please retry later"

    def __init__(self, retry_after: int = 5) -> None:
        super().__init__(retry_after)


class TooManyRequestsError(_RetryLaterError):
    """The client address failed to authenticate too often, too recently."""

    code = "TOO_MANY_REQUESTS"
    status = 429
    message = "Too many failed authentication attempts, please retry later"


class RateLimitedError(_RetryLaterError):
    """A valid key over its rate limit (see :mod:`~apikey_middleware.ratelimit`)."""

    code = "RATE_LIMITED"
    status = 429
    message = "Rate limit exceeded for this API key"

    def __init__(self, quota: Quota) -> None:
        super().__init__(quota.retry_after)
        #: Where the key stands against the limit it is over.
        self.quota = quota

    def get_headers(self) -> list[tuple[str, str]]:
        return [*super().get_headers(), *self.quota.headers()]


class StoreError(Exception):
    """What a key store reports: the root of the store's own errors."""


class StoreUnavailableError(StoreError):
    """The store could not answer (the database is down, slow, locked,
    missing its tables, or too many bcrypt checks were waiting)."""

    def __init__(self, detail: str = "") -> None:
        super().__init__(detail or "the key store could not answer")
        #: What went wrong, in one line, for logs (never a key).
        self.detail = detail


class KeyNotFoundError(StoreError, LookupError):
    """No key has this id."""

    def __init__(self, key_id: str) -> None:
        # A whole key (or its body) pasted by mistake for its id is never
        # repeated.
        if "sk_test_" in key_id or "sk_live_" in key_id or holds_key(key_id):
            message = "no API key with that id (give the key id, not the key itself)"
            key_id = "(a key, not shown)"
        else:
            message = f"no API key with id {key_id[:40]!r}"
        super().__init__(message)
        #: The public id that was asked for.
        self.key_id = key_id


class AlreadyRotatedError(ValueError):
    """The key was rotated already: its successor replaces it, and rotating
    it again would make a second one."""

    def __init__(self, key_id: str, successor_id: str) -> None:
        super().__init__(
            f"key {key_id!r} was already rotated to {successor_id!r}: rotate that key instead"
        )
        #: The key that was to be rotated.
        self.key_id = key_id
        #: The id of the key that replaces it.
        self.successor_id = successor_id
