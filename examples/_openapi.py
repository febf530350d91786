"""The Flask example's OpenAPI 3.1 document: the package's pieces for keys,
scopes and refusals, and the example's own bodies."""

from __future__ import annotations

import typing as t

from flask import Flask

from apikey_middleware.flask.openapi import paths
from apikey_middleware.openapi import components, error_schema


def _json(description: str, schema: dict[str, t.Any]) -> dict[str, t.Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


SCHEMAS: dict[str, dict[str, t.Any]] = {
    "Error": error_schema(),
    "Client": {
        "type": "object",
        "required": ["id", "name", "email"],
        "properties": {
            "id": {"type": "string"},
            "name": {"type": "string"},
            "email": {"type": "string"},
        },
    },
    "NewClient": {
        "type": "object",
        "required": ["name", "email"],
        "properties": {
            "name": {"type": "string", "minLength": 1},
            "email": {"type": "string", "minLength": 1},
        },
    },
}


def _success(data: dict[str, t.Any] | None, **extra: t.Any) -> dict[str, t.Any]:
    properties: dict[str, t.Any] = {"success": {"const": True}, **extra}
    if data is not None:
        properties["data"] = data
    return {"type": "object", "required": ["success"], "properties": properties}


NOT_FOUND = _json("No client has this id.", _ref("Error"))
OWN: dict[tuple[str, str], dict[str, t.Any]] = {
    ("/health", "get"): {
        "summary": "Is the server up? (no key)",
        "security": [],
        "responses": {"200": _json("Up.", {"type": "object", "required": ["status"]})},
    },
    ("/openapi.json", "get"): {
        "summary": "This document (no key)",
        "security": [],
        "responses": {"200": _json("The OpenAPI 3.1 document.", {"type": "object"})},
    },
    ("/v1/clients", "get"): {
        "summary": "List the clients",
        "responses": {
            "200": _json(
                "The clients.",
                _success({"type": "array", "items": _ref("Client")}, key_id={"type": "string"}),
            )
        },
    },
    ("/v1/clients", "post"): {
        "summary": "Add a client",
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": _ref("NewClient")}},
        },
        "responses": {
            "201": _json("Added.", _success(_ref("Client"))),
            "400": _json("Not JSON with a name and an email.", _ref("Error")),
        },
    },
    ("/v1/clients/{client_id}", "get"): {
        "summary": "One client",
        "responses": {"200": _json("The client.", _success(_ref("Client"))), "404": NOT_FOUND},
    },
    ("/v1/clients/{client_id}", "delete"): {
        "summary": "Remove a client",
        "responses": {"200": _json("Removed.", _success(None)), "404": NOT_FOUND},
    },
}


def openapi_document(app: Flask) -> dict[str, t.Any]:
    """The document: the decorated views' operations from the package,
    the example's summaries, bodies and public routes added to them."""
    document_paths = paths(app)
    for (path, method), fields in OWN.items():
        entry = document_paths.setdefault(path, {}).setdefault(method, {})
        responses = {**entry.get("responses", {}), **fields.get("responses", {})}
        entry.update(fields)
        entry["responses"] = responses
        entry.setdefault("operationId", f"{method}_{path.strip('/').replace('/', '_')}")
    parts = components()
    parts["schemas"].update(SCHEMAS)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Clients (apikey_middleware example)",
            "version": "1",
            "description": "Send a key as `Authorization: Bearer sk_test_...`.",
        },
        "components": parts,
        "paths": document_paths,
    }
