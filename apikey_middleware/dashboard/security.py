"""What keeps a page that mints credentials safe in a browser: CSRF tokens
and the response headers.

The dashboard uses these on its own pages; a host app may use them on the
pages around it (its login form, say), so that every form of the site is
guarded the same way.

CSRF: a random token is kept in the signed session and put in each form;
a ``POST`` whose form does not carry it (compared in constant time), or that
the browser says comes from another site (``Sec-Fetch-Site: cross-site``),
is refused. The session cookie is ``SameSite=Lax`` on top of that.
"""

from __future__ import annotations

import hmac
import secrets

from flask import request, session
from werkzeug.wrappers import Response

__all__ = [
    "CONTENT_SECURITY_POLICY",
    "CSRF_FIELD",
    "csrf_token",
    "csrf_token_valid",
    "secure_headers",
]

#: The form field that carries the token.
CSRF_FIELD = "csrf_token"
_SESSION_KEY = "_apikey_dashboard_csrf"
_TOKEN_BYTES = 32

#: Scripts, styles and images from the site itself only (no inline script or
#: style, no ``unsafe-inline``), forms posted only to it, never framed.
CONTENT_SECURITY_POLICY = "; ".join(
    [
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self'",
        "connect-src 'self'",
        "form-action 'self'",
        "frame-ancestors 'none'",
        "base-uri 'none'",
    ]
)


def csrf_token() -> str:
    """The current session's CSRF token, made on first use.

    The token lives as long as the session: a host that clears the session
    when an account signs in (it should) gets a new token then.
    """
    token = session.get(_SESSION_KEY)
    if not isinstance(token, str) or len(token) < _TOKEN_BYTES:
        token = secrets.token_urlsafe(_TOKEN_BYTES)
        session[_SESSION_KEY] = token
    return token


def csrf_token_valid() -> bool:
    """Whether the current request may change anything: its form carries
    this session's token, and the browser does not say it came from another
    site."""
    if request.headers.get("Sec-Fetch-Site", "").lower() == "cross-site":
        return False
    expected = session.get(_SESSION_KEY)
    sent = request.form.get(CSRF_FIELD, "")
    if not isinstance(expected, str) or not expected or not sent:
        return False
    return hmac.compare_digest(sent.encode("utf-8", "replace"), expected.encode("ascii"))


def secure_headers(response: Response, *, no_store: bool = True) -> Response:
    """Add the dashboard's security headers to ``response``.

    ``no_store`` keeps the page out of every cache, the browser's
    back-forward cache included: on a page that shows a new key, that is
    what keeps the key from being shown again.
    """
    headers = response.headers
    headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
    headers["X-Frame-Options"] = "DENY"
    headers["X-Content-Type-Options"] = "nosniff"
    headers["Referrer-Policy"] = "same-origin"
    headers["Cross-Origin-Opener-Policy"] = "same-origin"
    if no_store:
        headers["Cache-Control"] = "no-store"
        headers.pop("Expires", None)
        headers.pop("ETag", None)
        headers.pop("Last-Modified", None)
    return response
