"""OpenAPI 3.1 pieces for an API guarded by keys: the security scheme, the
scopes of each operation, and the refusals' bodies.

Plain dictionaries, for any way an OpenAPI document is built: by hand,
with apispec (``spec.components.security_scheme(SCHEME, security_scheme())``,
``spec.components.response(name, response)`` for each of
:func:`error_responses`, ``spec.components.schema(ERROR_SCHEMA, error_schema())``),
or from a Flask app's decorated views
(:func:`apikey_middleware.flask.openapi.paths`).

.. code-block:: python

    document = {
        "openapi": "3.1.0",
        "info": {"title": "Clients", "version": "1"},
        "components": components(),
        "paths": {"/v1/clients": {"get": operation(["clients:read"])}},
    }

OpenAPI 3.1 lets a security requirement of an ``http`` scheme list the
roles it needs: each operation lists its scopes there.
"""

from __future__ import annotations

import typing as t
from collections.abc import Iterable

from .errors import (
    ApiKeyError,
    ForbiddenError,
    InvalidKeyError,
    MissingKeyError,
    ServiceUnavailableError,
    TooManyRequestsError,
)

__all__ = [
    "ERROR_SCHEMA",
    "RESPONSES",
    "SCHEME",
    "components",
    "error_responses",
    "error_schema",
    "operation",
    "security_scheme",
]

#: The name of the security scheme in ``components.securitySchemes``.
SCHEME = "ApiKey"
#: The name of the refusals' body schema in ``components.schemas``.
ERROR_SCHEMA = "ApiKeyError"
#: Each refusal status, the name of its response in ``components.responses``.
RESPONSES: dict[str, str] = {
    "401": "ApiKeyUnauthorized",
    "403": "ApiKeyForbidden",
    "429": "ApiKeyTooManyRequests",
    "503": "ApiKeyServiceUnavailable",
}

_JSON = "application/json"


def security_scheme() -> dict[str, t.Any]:
    """The bearer scheme keys are sent with."""
    return {
        "type": "http",
        "scheme": "bearer",
        "description": (
            "An API key, sent as `Authorization: Bearer sk_live_...` (or `sk_test_...`)."
            " Each operation lists the scopes the key needs."
        ),
    }


def error_schema() -> dict[str, t.Any]:
    """The body of every refusal: ``{"success": false, "error": {"code", "message"}}``."""
    return {
        "type": "object",
        "required": ["success", "error"],
        "properties": {
            "success": {"const": False},
            "error": {
                "type": "object",
                "required": ["code", "message"],
                "properties": {"code": {"type": "string"}, "message": {"type": "string"}},
            },
        },
    }


def _header(description: str) -> dict[str, t.Any]:
    return {"description": description, "schema": {"type": "string"}}


def _response(
    description: str, errors: Iterable[ApiKeyError], headers: dict[str, str]
) -> dict[str, t.Any]:
    examples = {
        error.code: {
            "value": {"success": False, "error": {"code": error.code, "message": str(error)}}
        }
        for error in errors
    }
    return {
        "description": description,
        "headers": {
            "Cache-Control": _header("`no-store`"),
            **{name: _header(text) for name, text in headers.items()},
        },
        "content": {
            _JSON: {
                "schema": {"$ref": f"#/components/schemas/{ERROR_SCHEMA}"},
                "examples": examples,
            }
        },
    }


def error_responses() -> dict[str, dict[str, t.Any]]:
    """The refusals, by their name in ``components.responses``."""
    challenge = 'RFC 6750 challenge: `Bearer realm="api"`, with the error and scope'
    return {
        RESPONSES["401"]: _response(
            "No API key, or one that is invalid, revoked or expired.",
            [MissingKeyError(), InvalidKeyError()],
            {"WWW-Authenticate": challenge},
        ),
        RESPONSES["403"]: _response(
            "The key lacks a needed scope, or is of a type not accepted here.",
            [ForbiddenError()],
            {"WWW-Authenticate": challenge},
        ),
        RESPONSES["429"]: _response(
            "Too many failed attempts from this address: retry later.",
            [TooManyRequestsError(60)],
            {"Retry-After": "Seconds to wait."},
        ),
        RESPONSES["503"]: _response(
            "Keys cannot be checked now (the key store is down): retry later.",
            [ServiceUnavailableError()],
            {"Retry-After": "Seconds to wait."},
        ),
    }


def components(*, scheme: str = SCHEME) -> dict[str, t.Any]:
    """``components`` for a document: the scheme, the error schema and the
    refusals' responses (merge your own into it)."""
    return {
        "securitySchemes": {scheme: security_scheme()},
        "schemas": {ERROR_SCHEMA: error_schema()},
        "responses": error_responses(),
    }


def operation(scopes: Iterable[str] = (), *, scheme: str = SCHEME) -> dict[str, t.Any]:
    """What an operation that needs a key holding ``scopes`` declares: its
    security requirement and the refusals it may get. Merge the operation's
    own fields (summary, parameters, its other responses) into it."""
    return {
        "security": [{scheme: sorted(scopes)}],
        "responses": {
            status: {"$ref": f"#/components/responses/{name}"} for status, name in RESPONSES.items()
        },
    }
