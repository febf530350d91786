"""The OpenAPI paths of a Flask app's views that need a key.

:func:`paths` reads the app's URL map: every view decorated with
:func:`~apikey_middleware.flask.require_scopes` (a ``MethodView``'s methods
included) becomes an operation with its scopes and the refusals it may get
(:func:`apikey_middleware.openapi.operation`), its path parameters typed
from Werkzeug's converters. Merge your own fields into it:

.. code-block:: python

    from apikey_middleware.openapi import components
    from apikey_middleware.flask.openapi import paths

    @app.get("/openapi.json")
    def openapi_document():
        return {
            "openapi": "3.1.0",
            "info": {"title": "Clients", "version": "1"},
            "components": components(),
            "paths": paths(current_app),
        }
"""

from __future__ import annotations

import re
import typing as t

from flask import Flask

from ..openapi import SCHEME, operation
from . import view_scopes

__all__ = ["openapi_path", "paths"]

# <name>, <converter:name>, <converter(arguments):name>
_ARGUMENT_RE = re.compile(r"<(?:(?P<converter>[a-zA-Z_]\w*)(?:\([^>]*\))?:)?(?P<name>\w+)>")
_SCHEMAS: dict[str, dict[str, t.Any]] = {
    "int": {"type": "integer", "minimum": 0},
    "float": {"type": "number", "minimum": 0},
    "uuid": {"type": "string", "format": "uuid"},
}
_IGNORED_METHODS = {"HEAD", "OPTIONS"}


def openapi_path(rule: str) -> tuple[str, list[dict[str, t.Any]]]:
    """A Werkzeug rule as an OpenAPI path and its path parameters:
    ``/v1/clients/<int:id>`` is ``/v1/clients/{id}`` with an integer ``id``."""
    parameters = []
    for match in _ARGUMENT_RE.finditer(rule):
        schema = _SCHEMAS.get(match.group("converter") or "", {"type": "string"})
        parameters.append(
            {"name": match.group("name"), "in": "path", "required": True, "schema": dict(schema)}
        )
    return _ARGUMENT_RE.sub(r"{\g<name>}", rule), parameters


def _method_scopes(view: t.Any, method: str) -> tuple[str, ...] | None:
    scopes = view_scopes(view)
    view_class = getattr(view, "view_class", None)
    function = getattr(view_class, method.lower(), None) if view_class is not None else None
    inner = view_scopes(function) if function is not None else None
    if scopes is None or inner is None:
        return inner if scopes is None else scopes
    return tuple(sorted({*scopes, *inner}))


def paths(app: Flask, *, scheme: str = SCHEME) -> dict[str, dict[str, t.Any]]:
    """``paths`` of an OpenAPI 3.1 document: an operation per decorated
    view and method, with ``operationId`` (the endpoint), its path
    parameters, its scopes and the refusals' responses."""
    found: dict[str, dict[str, t.Any]] = {}
    for rule in app.url_map.iter_rules():
        view = app.view_functions.get(rule.endpoint)
        path, parameters = openapi_path(rule.rule)
        methods = sorted((rule.methods or set()) - _IGNORED_METHODS)
        for method in methods:
            scopes = _method_scopes(view, method)
            if scopes is None:
                continue
            entry = operation(scopes, scheme=scheme)
            entry["operationId"] = (
                rule.endpoint if len(methods) == 1 else f"{rule.endpoint}.{method.lower()}"
            )
            if parameters:
                entry["parameters"] = [dict(parameter) for parameter in parameters]
            found.setdefault(path, {})[method.lower()] = entry
    return found
