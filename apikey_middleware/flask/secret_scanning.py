"""The partner endpoint of GitHub's secret scanning, as a Flask blueprint.

GitHub finds strings of an enrolled token format in public repositories,
gists, npm packages and the like, and POSTs them, signed, to the token's
provider. This blueprint checks the signature, tells which tokens are
really keys of the store, revokes them (or only reports them), records
each leak for ``apikey show``, tells the host app through ``on_leak``, and
answers with the program's labels:

.. code-block:: python

    from apikey_middleware.flask.secret_scanning import create_blueprint

    bp = create_blueprint(store, on_leak=lambda leak: queue_email(leak.owner, leak.url))
    app.register_blueprint(bp, url_prefix="/github/secret-scanning")

Anything unsigned, badly signed, oversized or malformed is refused before
the store is touched. A report is acted on once: the same body again (a
retry, as GitHub sends after a slow answer) gets the same labels, 200,
without a second revoke, record or ``on_leak``. Needs the
``secret-scanning`` extra (``cryptography``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import typing as t
from collections.abc import Callable

from flask import Blueprint, request
from sqlalchemy import exc
from werkzeug.exceptions import RequestEntityTooLarge
from werkzeug.wrappers import Response

from .. import leaks
from .._checks import integer
from ..errors import ApiKeyError, ServiceUnavailableError
from ..keys import ParsedKey, parse_key
from ..leaks import LeakedKey
from ..store import SQLAlchemyKeyStore

try:
    from .public_keys import GITHUB_PUBLIC_KEYS_URL, KeysUnavailable, PublicKeys
except ImportError as error:  # pragma: no cover - only without the extra
    raise ImportError(
        "the secret scanning endpoint needs cryptography:"
        " pip install 'apikey_middleware[secret-scanning]'"
    ) from error

__all__ = ["GITHUB_PUBLIC_KEYS_URL", "LeakedKey", "create_blueprint"]

logger = logging.getLogger("apikey_middleware")

#: The largest report body read; a larger one is answered 413.
DEFAULT_MAX_BODY_SIZE = 1024 * 1024
#: The most reported tokens one report may hold; more is answered 413.
DEFAULT_MAX_TOKENS = 1000
#: The most tokens of existing key ids one report may have checked against
#: their stored hash (bcrypt, about 0.3 s each at cost 12).
DEFAULT_MAX_CHECKS = 20
ACTIONS = ("revoke", "report")

_IDENTIFIER_HEADER = "Github-Public-Key-Identifier"
_SIGNATURE_HEADER = "Github-Public-Key-Signature"


class ReportError(ApiKeyError):
    """A secret scanning report refused, with nothing done."""


class UnsignedReportError(ReportError):
    code = "UNAUTHORIZED"
    status = 401
    message = "The report is not signed"


class InvalidSignatureError(ReportError):
    """A bad signature or an unknown key identifier: the two are not told apart."""

    code = "INVALID_SIGNATURE"
    status = 401
    message = "The report's signature cannot be verified"


class ReportTooLargeError(ReportError):
    code = "PAYLOAD_TOO_LARGE"
    status = 413
    message = "The report is too large"


class MalformedReportError(ReportError):
    code = "BAD_REQUEST"
    status = 400
    message = "The report must be a JSON array of objects with a token and a type"


class MethodNotAllowedError(ReportError):
    code = "METHOD_NOT_ALLOWED"
    status = 405
    message = "Reports are sent with POST"

    def get_headers(self) -> list[tuple[str, str]]:
        return [*super().get_headers(), ("Allow", "POST")]


class KeysUnavailableError(ServiceUnavailableError):
    """GitHub's signing keys could not be fetched: reports are refused (fail closed)."""

    message = "The signing keys cannot be fetched, please retry later"


class _Item(t.NamedTuple):
    token: str
    token_type: str
    url: str
    source: str


def _read_body(limit: int) -> bytes:
    if request.content_length is not None and request.content_length > limit:
        raise ReportTooLargeError
    chunks, size = [], 0
    try:
        while size <= limit:
            chunk = request.stream.read(min(65536, limit + 1 - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    except RequestEntityTooLarge:
        raise ReportTooLargeError from None
    if size > limit:
        raise ReportTooLargeError
    return b"".join(chunks)


def _parse(body: bytes, max_tokens: int) -> list[_Item]:
    try:
        document = json.loads(body)
    except (ValueError, RecursionError):
        raise MalformedReportError from None
    if not isinstance(document, list):
        raise MalformedReportError
    if len(document) > max_tokens:
        raise ReportTooLargeError
    items = []
    for entry in document:
        if not isinstance(entry, dict):
            raise MalformedReportError
        token, token_type = entry.get("token"), entry.get("type")
        url, source = entry.get("url") or "", entry.get("source") or ""
        if not (
            isinstance(token, str)
            and isinstance(token_type, str)
            and isinstance(url, str)
            and isinstance(source, str)
        ):
            raise MalformedReportError
        try:  # a lone surrogate, say: refused before anything is acted on
            for field in (token, token_type, url, source):
                field.encode("utf-8")
        except UnicodeEncodeError:
            raise MalformedReportError from None
        items.append(_Item(token, token_type, url, source))
    # The same match twice in one report counts once.
    return list(dict.fromkeys(items))


class _Endpoint:
    """The view: one report in, labels out."""

    def __init__(
        self,
        store: SQLAlchemyKeyStore,
        keys: PublicKeys,
        *,
        revoke: bool,
        on_leak: Callable[[LeakedKey], object] | None,
        max_body_size: int,
        max_tokens: int,
        max_checks: int,
    ) -> None:
        self.store = store
        self.keys = keys
        self.revoke = revoke
        self.on_leak = on_leak
        self.max_body_size = max_body_size
        self.max_tokens = max_tokens
        self.max_checks = max_checks

    def __call__(self) -> Response:
        try:
            return self.handle()
        except ApiKeyError as error:
            return error.get_response()

    def handle(self) -> Response:
        identifier = request.headers.get(_IDENTIFIER_HEADER, "")
        signature = request.headers.get(_SIGNATURE_HEADER, "")
        if not identifier or not signature:
            raise UnsignedReportError
        body = _read_body(self.max_body_size)
        try:
            signed = self.keys.verify(identifier, signature, body)
        except KeysUnavailable:
            raise KeysUnavailableError(round(self.keys.retry_interval)) from None
        if not signed:
            raise InvalidSignatureError
        items = _parse(body, self.max_tokens)
        digest = hashlib.sha256(body).hexdigest()
        try:
            return self._act(items, digest)
        except exc.SQLAlchemyError as error:
            cause = error.orig if isinstance(error, exc.DBAPIError) else error
            logger.error(
                "secret scanning report %s not acted on, the key store failed: %s",
                digest[:12],
                type(cause).__name__,
            )
            raise ServiceUnavailableError() from None

    def _act(self, items: list[_Item], digest: str) -> Response:
        seen = leaks.report_seen(self.store, digest)
        parsed: dict[str, ParsedKey] = {}
        for item in items:
            key = parse_key(item.token)
            if key is not None:
                parsed[item.token] = key
        ours, unchecked = leaks.identify(
            self.store, list(parsed.values()), max_checks=self.max_checks
        )
        found = [(ours[item.token], item.url, item.source) for item in items if item.token in ours]
        if seen:
            return self._answer_again(items, ours, unchecked, digest)
        try:
            actions = leaks.record(self.store, found, revoke=self.revoke, report_digest=digest)
        except leaks.ReplayedReport:
            # A concurrent copy of the report acted on it first.
            return self._answer_again(items, ours, unchecked, digest)
        if unchecked:
            logger.warning(
                "secret scanning report %s: %d token(s) of key ids %s left unchecked"
                " (more than %d to check in one report)",
                digest[:12],
                len(unchecked),
                ", ".join(sorted({key.key_id for key in unchecked})),
                self.max_checks,
            )
        logger.info(
            "secret scanning report %s: %d token(s), leaked keys %s",
            digest[:12],
            len(items),
            ", ".join(f"{key_id} ({action})" for key_id, action in actions.items()) or "none",
        )
        self._tell(found, actions)
        return _labels(items, ours, unchecked)

    def _answer_again(
        self,
        items: list[_Item],
        ours: dict[str, leaks.KeyRow],
        unchecked: list[ParsedKey],
        digest: str,
    ) -> Response:
        logger.info("secret scanning report %s received again: answered, not acted on", digest[:12])
        return _labels(items, ours, unchecked)

    def _tell(
        self, found: list[tuple[leaks.KeyRow, str, str]], actions: dict[str, leaks.Action]
    ) -> None:
        if self.on_leak is None:
            return
        told: set[str] = set()
        for row, url, source in found:
            if row.id in told:
                continue
            told.add(row.id)
            try:
                self.on_leak(leaks.leaked_key(row, url, source, actions[row.id]))
            except Exception:
                # The key is revoked and recorded whatever the hook does.
                logger.exception("the on_leak hook failed for key %s", row.id)


def _labels(
    items: list[_Item], ours: dict[str, leaks.KeyRow], unchecked: list[ParsedKey]
) -> Response:
    """The program's answer: a label per token checked, in the report's order."""
    skipped = {key.key for key in unchecked}
    labels, seen = [], set()
    for item in items:
        if item.token in seen or item.token in skipped:
            continue
        seen.add(item.token)
        labels.append(
            {
                "token_hash": hashlib.sha256(item.token.encode("utf-8")).hexdigest(),
                "token_type": item.token_type,
                "label": "true_positive" if item.token in ours else "false_positive",
            }
        )
    return Response(json.dumps(labels), 200, {"Content-Type": "application/json"})


def create_blueprint(
    store: SQLAlchemyKeyStore,
    *,
    public_keys_url: str = GITHUB_PUBLIC_KEYS_URL,
    action: t.Literal["revoke", "report"] = "revoke",
    on_leak: Callable[[LeakedKey], object] | None = None,
    name: str = "apikey_secret_scanning",
    timeout: float = 3.0,
    keys_ttl: float = 3600.0,
    refetch_interval: float = 300.0,
    retry_interval: float = 30.0,
    max_body_size: int = DEFAULT_MAX_BODY_SIZE,
    max_tokens: int = DEFAULT_MAX_TOKENS,
    max_checks: int = DEFAULT_MAX_CHECKS,
) -> Blueprint:
    """The secret scanning partner endpoint: ``POST`` at the blueprint's prefix.

    :param store: the key store whose keys are looked for.
    :param public_keys_url: GitHub's signing keys document (a local copy in tests).
    :param action: ``"revoke"`` revokes an active key found leaked;
        ``"report"`` only records it and calls ``on_leak``.
    :param on_leak: called once per leaked key of a report with a
        :class:`~apikey_middleware.leaks.LeakedKey` (never the key itself), after the revocation is
        committed; keep it quick (queue the e-mail), as GitHub retries slow
        answers. What it raises is logged and changes nothing.
    :param timeout: seconds a fetch of the keys document may take.
    :param keys_ttl: seconds fetched signing keys are used.
    :param refetch_interval: the least seconds between two fetches for
        unknown key identifiers.
    :param retry_interval: the least seconds between two fetches after one
        failed (requests are answered 503 meanwhile, if no key is fresh).
    :param max_body_size: the largest body read, in bytes (else 413).
    :param max_tokens: the most tokens one report may hold (else 413).
    :param max_checks: the most tokens of existing key ids checked against
        their stored hash per report; further ones are left unlabelled and
        logged.
    :raises ValueError: a bad ``action``, URL or bound.
    """
    if action not in ACTIONS:
        raise ValueError(f"action must be one of {', '.join(ACTIONS)}, not {action!r}")
    if on_leak is not None and not callable(on_leak):
        raise TypeError(f"on_leak must be callable, not {type(on_leak).__name__}")
    integer("max_body_size", max_body_size)
    integer("max_tokens", max_tokens)
    integer("max_checks", max_checks)
    keys = PublicKeys(
        public_keys_url,
        timeout=timeout,
        ttl=keys_ttl,
        refetch_interval=refetch_interval,
        retry_interval=retry_interval,
    )
    endpoint = _Endpoint(
        store,
        keys,
        revoke=action == "revoke",
        on_leak=on_leak,
        max_body_size=max_body_size,
        max_tokens=max_tokens,
        max_checks=max_checks,
    )
    blueprint = Blueprint(name, __name__)
    blueprint.add_url_rule("/", "report", endpoint, methods=["POST"], strict_slashes=False)
    blueprint.add_url_rule(
        "/",
        "other_method",
        MethodNotAllowedError().get_response,
        methods=["GET", "PUT", "PATCH", "DELETE"],
        strict_slashes=False,
    )
    return blueprint
