"""The rule table: which scopes a request needs, judged from its method and path.

Paths are judged as the guarded app may resolve them, since the middleware
cannot know how it does:

- refused with 400, as no app should be asked to resolve them: a ``.`` or
  ``..`` segment; a backslash; a percent-encoded triple left after the
  server decoded the path once (a double-encoded URL, which an app that
  decodes again would read as another path); a control character; a
  segment that ends in a dot or a space (which some file systems drop); a
  character that Unicode compatibility normalisation (NFKC) would change,
  such as a fullwidth dot; a character no WSGI string may hold; a path of
  more than :data:`MAX_PATH` characters;
- judged in every spelling an app may route it by, and given the scopes of
  all: the path as it is, without ``;`` parameters, and lower-cased. It is
  public only if every spelling is.

A method that is not a short HTTP token is refused the same way, before
anything is remembered about it. A request with another method than
``GET``, ``HEAD``, ``POST``, ``PUT``, ``PATCH`` or ``DELETE`` (``OPTIONS``,
``PROPFIND``, any token) that no rule names, on a path some rules name for
other methods, needs the scopes of all those rules: an app that answers
such methods as if they were ``GET`` must not serve them more cheaply. (An
app that does not route by method at all needs rules with ``"*"``.)
"""

from __future__ import annotations

import enum
import functools
import re
import unicodedata
from collections.abc import Iterable, Sequence

from werkzeug.exceptions import MethodNotAllowed, NotFound
from werkzeug.routing import Map, MapAdapter, RequestRedirect, Rule

from .principal import normalize_scopes

#: ``(methods, path, scopes)``: ``"GET"``, ``["GET", "POST"]`` or ``"*"``; a
#: Werkzeug rule path; one scope or several.
AccessRule = tuple[str | Sequence[str], str, str | Sequence[str]]

#: The longest ``PATH_INFO`` judged; a longer one gets 400.
MAX_PATH = 8192


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
_UNSAFE_RE = re.compile(r"[\x00-\x1f\x7f\\]|%[0-9A-Fa-f]{2}|[. ](?:/|$)")
_PARAMS_RE = re.compile(r";[^/]*")
_DOT_SEGMENTS = frozenset((".", ".."))
# Methods apps route on: without a rule of their own they need no scope.
_ROUTED_METHODS = frozenset(("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"))


def _methods(methods: str | Sequence[str]) -> list[str] | None:
    if isinstance(methods, str):
        methods = [methods]
    if not methods or not all(isinstance(method, str) and method for method in methods):
        raise ValueError(f"rule methods must be 'GET', a list of methods or '*', not {methods!r}")
    if "*" in methods:
        return None
    return [method.upper() for method in methods]


class _Match(enum.Enum):
    NONE = 0
    PATH = 1  # the path, for other methods
    FULL = 2


def _match(adapter: MapAdapter, path: str, method: str, *, redirect: bool) -> _Match:
    try:
        adapter.match(path, method)
    except RequestRedirect:
        return _Match.FULL if redirect else _Match.NONE
    except MethodNotAllowed:
        return _Match.PATH
    except NotFound:
        return _Match.NONE
    return _Match.FULL


def resolves_elsewhere(path: str) -> bool:
    """Tell whether an app may resolve the decoded ``path`` to another one
    than the middleware sees (see the module's first list)."""
    if _UNSAFE_RE.search(path) is not None:
        return True
    if not path.isascii() and unicodedata.normalize("NFKC", path) != path:
        return True
    if "." not in path:
        return False
    return any(segment.partition(";")[0] in _DOT_SEGMENTS for segment in path.split("/"))


def spellings(path: str) -> set[str]:
    """The spellings of a decoded path an app may route by: as it is,
    without ``;`` parameters, lower-cased."""
    forms = {path}
    if ";" in path:
        forms.add(_PARAMS_RE.sub("", path))
    if not path.islower():
        forms |= {form.lower() for form in forms}
    return forms


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

    Override :meth:`scopes_for` to judge one spelling of a path another
    way; what :meth:`needs` answers for a method and raw path is remembered
    (for short paths).
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
        public = _match(self._public_map, path, method, redirect=False) is _Match.FULL
        if "//" not in path and public:
            return None
        other_methods: set[str] = set()
        for adapter, scopes in self._rule_maps:
            found = _match(adapter, path, method, redirect=True)
            if found is _Match.FULL:
                return scopes
            if found is _Match.PATH and method not in _ROUTED_METHODS:
                other_methods.update(scopes)
        return tuple(sorted(other_methods))

    def needs(self, method: str, raw_path: str) -> Needs:
        """What a request needs, from its upper-cased ``REQUEST_METHOD`` and
        raw ``PATH_INFO``; remembered for short paths and valid methods."""
        if _METHOD_RE.fullmatch(method) is None or len(raw_path) > MAX_PATH:
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
        needed: set[str] = set()
        public = True
        for form in spellings(path):
            scopes = self.scopes_for(method, form)
            if scopes is not None:
                public = False
                needed.update(scopes)
        return Verdict.PUBLIC if public else tuple(sorted(needed))
