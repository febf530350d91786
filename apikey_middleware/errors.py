"""Why a request was refused, and the exact response each reason gets.

Every reason is an :class:`ApiKeyError`. Its ``code``, ``status`` and
``message`` are the public contract; :meth:`ApiKeyError.get_response` builds
the JSON response from them, and the instance is itself a WSGI application
that sends it, like Werkzeug's HTTP exceptions. The middleware and the Flask
decorator both answer through these objects, so their responses are the
same byte for byte.

No message or attribute here ever contains a key.
"""

from __future__ import annotations

import functools
import json
import typing as t
from collections.abc import Iterable

from werkzeug.http import HTTP_STATUS_CODES
from werkzeug.wrappers import Response

if t.TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIEnvironment

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
    """A request that cannot go on: the root of every refusal.

    :attr code: the ``error.code`` of the JSON body, such as ``UNAUTHORIZED``.
    :attr status: the HTTP status code.
    :attr message: the ``error.message`` of the JSON body; also ``str()``.
    """

    code: t.ClassVar[str]
    status: t.ClassVar[int]
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
    """An :class:`InvalidKeyError` for a key id the store knows.

    The answer is the same as for any invalid key; the id is kept only so
    that the attempt can be written to that key's usage log.
    """

    def __init__(self, key_id: str) -> None:
        super().__init__()
        self.key_id = key_id

    def __repr__(self) -> str:
        return f"RejectedKeyError(key_id={self.key_id!r})"


class ForbiddenError(ApiKeyError):
    """A valid key that lacks a needed scope or is of a refused type.

    :attr scopes: the scopes the request needed, named in the
        ``WWW-Authenticate`` header (RFC 6750 §3).
    """

    code = "FORBIDDEN"
    status = 403
    message = "Your API key does not have permission to perform this action"

    def __init__(self, scopes: Iterable[str] = ()) -> None:
        super().__init__()
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


class KeyNotFoundError(LookupError):
    """No key has this id.

    :attr key_id: the public id that was asked for.
    """

    def __init__(self, key_id: str) -> None:
        # A whole key pasted by mistake for its id is never repeated.
        if "sk_test_" in key_id or "sk_live_" in key_id:
            message = "no API key with that id (give the key id, not the key itself)"
        else:
            message = f"no API key with id {key_id[:40]!r}"
        super().__init__(message)
        self.key_id = key_id
