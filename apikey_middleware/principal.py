"""Who a request is (the principal) and what it may do (its scopes)."""

from __future__ import annotations

import re
import typing as t
from collections.abc import Iterable
from dataclasses import dataclass

from .keys import holds_key, shown_safely

# ``clients:read``, ``clients:*``, ``*``: parts of name characters joined by
# colons, the last of which may be a wildcard. No spaces or quotes, so a set
# of scopes can be written space-separated (RFC 6749 §3.3) and quoted in a
# WWW-Authenticate header as it is.
_SCOPE_RE = re.compile(r"(?:[A-Za-z0-9_.\-]+:)*(?:[A-Za-z0-9_.\-]+|\*)")
MAX_SCOPE_LENGTH = 100


def validate_scope(scope: object) -> str:
    """Return ``scope`` if it is a well-formed scope, else raise.

    :raises TypeError: if it is not a string.
    :raises ValueError: if it is empty, too long or has other characters.
    """
    if not isinstance(scope, str):
        raise TypeError(f"a scope must be a string, not {type(scope).__name__}")
    if holds_key(scope):
        raise ValueError("a scope must not hold an API key (the value is not shown)")
    if len(scope) > MAX_SCOPE_LENGTH or _SCOPE_RE.fullmatch(scope) is None:
        raise ValueError(
            f"invalid scope {shown_safely(scope)}: use names like 'clients:read',"
            " 'clients:*' or '*'"
        )
    return scope


def normalize_scopes(scopes: str | Iterable[str]) -> tuple[str, ...]:
    """Validate one scope or several and return them sorted and unique."""
    if isinstance(scopes, str):
        scopes = (scopes,)
    return tuple(sorted({validate_scope(scope) for scope in scopes}))


def scope_granted(granted: frozenset[str], wanted: str) -> bool:
    """Tell whether the ``granted`` scopes cover ``wanted``.

    ``*`` covers everything; ``clients:*`` covers every ``clients:`` scope,
    at any depth.
    """
    if wanted in granted or "*" in granted:
        return True
    end = wanted.find(":")
    while end != -1:
        if wanted[: end + 1] + "*" in granted:
            return True
        end = wanted.find(":", end + 1)
    return False


@dataclass(frozen=True, slots=True)
class Principal:
    """The key behind an authenticated request.

    The middleware puts it at ``environ["apikey.principal"]``; the Flask
    extension serves it as ``current_principal``. It holds nothing secret.
    """

    key_id: str
    name: str
    key_type: t.Literal["test", "live"]
    scopes: frozenset[str]
    owner: str | None = None
    #: The key's own rate limit in the ``limits`` notation, or ``None``
    #: (the middleware's ``default_rate_limit`` applies).
    rate_limit: str | None = None

    def has_scopes(self, *scopes: str) -> bool:
        """Tell whether this key holds every one of ``scopes``."""
        return all(scope_granted(self.scopes, scope) for scope in scopes)
