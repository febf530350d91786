"""The rule table: which scopes a request needs, judged from its method and path.

Paths are judged as the guarded app may resolve them. A path with ``.`` or
``..`` segments, a path that still holds a percent-encoded dot, slash,
backslash or percent after the server decoded it once (a double-encoded URL,
which an app that decodes again would resolve), a control character, or a
character a WSGI string cannot hold is refused with 400: no public pattern
and no rule is ever matched against a spelling the app might read as
another path. A method that is not a short HTTP token is refused the same
way, before anything is remembered about it.
"""

from __future__ import annotations

import enum
import functools
import re
from collections.abc import Iterable, Sequence

from werkzeug.exceptions import MethodNotAllowed, NotFound
from werkzeug.routing import Map, MapAdapter, RequestRedirect, Rule

from .principal import normalize_scopes

#: ``(methods, path, scopes)``: ``"GET"``, ``["GET", "POST"]`` or ``"*"``; a
#: Werkzeug rule path; one scope or several.
AccessRule = tuple[str | Sequence[str], str, str | Sequence[str]]


class Verdict(enum.Enum):
    """What a request needs when it is not a set of scopes."""

    #: a public path: no key, no principal.
    PUBLIC = "public"
    #: a path or method that cannot be judged safely: 400.
    BAD_REQUEST = "bad request"


#: The scopes a request needs (possibly none), or a :class:`Verdict`.
Needs = tuple[str, ...] | Verdict

# Paths longer than this are judged every time instead of remembered, so
# that hostile paths cannot fill memory; so are bad methods.
_MAX_CACHED_PATH = 512
_METHOD_RE = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]{1,32}")
_SEGMENT_RE = re.compile(r"[/\\]")
_UNSAFE_RE = re.compile(r"[\x00-\x1f\x7f]|%(?:2e|2f|5c|25)", re.IGNORECASE)
_DOT_SEGMENTS = frozenset((".", ".."))


def _methods(methods: str | Sequence[str]) -> list[str] | None:
    if isinstance(methods, str):
        methods = [methods]
    if not methods or not all(isinstance(method, str) and method for method in methods):
        raise ValueError(f"rule methods must be 'GET', a list of methods or '*', not {methods!r}")
    if "*" in methods:
        return None
    return [method.upper() for method in methods]


def _matches(adapter: MapAdapter, path: str, method: str, *, redirect: bool) -> bool:
    try:
        adapter.match(path, method)
    except RequestRedirect:
        return redirect
    except (NotFound, MethodNotAllowed):
        return False
    return True


def resolves_elsewhere(path: str) -> bool:
    """Tell whether an app might resolve the decoded ``path`` to another one.

    True for ``.`` and ``..`` segments (also between backslashes, and before
    a ``;`` parameter), for a percent-encoded dot, slash, backslash or
    percent left in it, and for control characters.
    """
    if _UNSAFE_RE.search(path) is not None:
        return True
    if "." not in path:
        return False
    return any(segment.partition(";")[0] in _DOT_SEGMENTS for segment in _SEGMENT_RE.split(path))


class RuleTable:
    """Public paths and access rules, and a memory of what each request needs.

    :param rules: ``(methods, path, scopes)`` entries; the first whose
        methods and Werkzeug rule path match decides the scopes a request
        needs. A path no rule matches needs a valid key and no scope.
    :param public: Werkzeug rule paths that pass without a key.

    Each rule has a Werkzeug :class:`~werkzeug.routing.Map` of its own: one
    map holding every rule would pick the most specific match, while the
    contract is that the *first* matching rule decides. Rule maps match
    loosely (a trailing slash or doubled slashes still match, so a variant
    spelling is never less guarded); the public map matches strictly, and a
    path with an empty segment (``//health``) is never public.

    Override :meth:`scopes_for` to judge requests another way; what it
    answers for a method and path is remembered (for short paths).
    """

    def __init__(self, rules: Iterable[AccessRule] = (), public: Iterable[str] = ()) -> None:
        self.rules = [
            (_methods(methods), path, normalize_scopes(scopes)) for methods, path, scopes in rules
        ]
        self.public = [public] if isinstance(public, str) else list(public)
        self._public_map = Map(
            [Rule(path) for path in self.public], strict_slashes=True, merge_slashes=False
        ).bind("localhost")
        self._rule_maps = [
            (
                Map([Rule(path, methods=methods)], strict_slashes=False, merge_slashes=True).bind(
                    "localhost"
                ),
                scopes,
            )
            for methods, path, scopes in self.rules
        ]
        self._cached = functools.lru_cache(maxsize=4096)(self._judge)

    def __repr__(self) -> str:
        return f"RuleTable({len(self.rules)} rules, {len(self.public)} public paths)"

    def scopes_for(self, method: str, path: str) -> tuple[str, ...] | None:
        """The scopes a request with this method and decoded path needs, or
        ``None`` for a public path. The path has passed the checks above."""
        if "//" not in path and _matches(self._public_map, path, method, redirect=False):
            return None
        for adapter, scopes in self._rule_maps:
            if _matches(adapter, path, method, redirect=True):
                return scopes
        return ()

    def needs(self, method: str, raw_path: str) -> Needs:
        """What a request needs, from its upper-cased ``REQUEST_METHOD`` and
        raw ``PATH_INFO``; remembered for short paths and valid methods."""
        if _METHOD_RE.fullmatch(method) is None:
            return Verdict.BAD_REQUEST
        if len(raw_path) > _MAX_CACHED_PATH:
            return self._judge(method, raw_path)
        return self._cached(method, raw_path)

    def _judge(self, method: str, raw_path: str) -> Needs:
        try:
            # PATH_INFO as Werkzeug's get_path_info decodes it.
            path = raw_path.encode("latin-1").decode("utf-8", "replace")
        except UnicodeEncodeError:  # not a WSGI string: outer code made it
            return Verdict.BAD_REQUEST
        if resolves_elsewhere(path):
            return Verdict.BAD_REQUEST
        scopes = self.scopes_for(method, path)
        return Verdict.PUBLIC if scopes is None else scopes
