"""Sphinx configuration of the documentation site; ``make docs`` builds it.

The build treats every warning as an error and is nitpicky, so a role in a
docstring that names nothing (a stale ``:class:``) fails it.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import pkgutil
import sys

project = "apikey_middleware"
copyright = "2026, apikey_middleware developers"
release = importlib.metadata.version("apikey_middleware")
version = ".".join(release.split(".")[:2])

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx_click",
    "myst_parser",
]
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
exclude_patterns = ["_build"]
templates_path = ["_templates"]
html_theme = "alabaster"
html_theme_options = {
    "description": "API-key authentication for any WSGI application",
    "page_width": "1160px",
    "sidebar_width": "280px",
}

# One page per module listed in api.rst, written from _templates/autosummary.
# Each name is documented once, in the module that defines it: a module's
# page ignores its __all__, and the package's page links its re-exports there.
autosummary_generate = True
autodoc_default_options = {"ignore-module-all": True}
autodoc_member_order = "bysource"
autodoc_typehints = "signature"
# A method without a docstring of its own (an override of SQLAlchemy's, say)
# is left out rather than shown with another project's text and references.
autodoc_inherit_docstrings = False


# Re-exported objects that are neither classes nor functions, by where they
# are defined.
_DEFINED_IN = {"apikey_middleware.metadata": "apikey_middleware.schema"}


def _reexports(package: str) -> dict[str, list[str]]:
    """Per module of ``package``: the names of its ``__all__`` that another
    module defines, written as autosummary wants them on its page."""
    path = importlib.import_module(package).__path__
    names = [package] + [info.name for info in pkgutil.walk_packages(path, package + ".")]
    found: dict[str, list[str]] = {}
    for name in names:
        module = importlib.import_module(name)
        found[name] = []
        for member in getattr(module, "__all__", ()):
            value = getattr(module, member)
            # A class or function says where it is defined; another object
            # (metadata, a click group) names its class's module instead.
            if hasattr(value, "__qualname__"):
                origin = value.__module__
            else:
                origin = _DEFINED_IN.get(f"{name}.{member}", name)
            if origin != name:
                found[name].append(f"{origin.removeprefix(name + '.')}.{member}")
    return found


autosummary_context = {"reexports": _reexports("apikey_middleware")}

# Headings get anchors, so a page can link to another's section.
myst_heading_anchors = 3

nitpicky = True
# Names outside this project. There is no network to fetch other projects'
# inventories (intersphinx), so references to them cannot resolve; they are
# listed here instead of being left as warnings. Python's builtins and typing
# names need no entry: Sphinx lets them pass.
_STDLIB = "|".join(sorted(sys.stdlib_module_names))
nitpick_ignore_regex = [
    # The standard library: its modules and what they define.
    ("py:mod", rf"({_STDLIB})(\..+)?"),
    ("py:(class|exc|func|meth|attr|obj|data)", rf"({_STDLIB})\..+"),
    # Libraries the package builds on.
    (
        "py:(class|exc|func|meth|attr|mod|obj|data)",
        r"(werkzeug|sqlalchemy|flask|click|cryptography|limits|redis)(\..+)?",
    ),
    # Annotations Sphinx shows as written, unevaluated: names imported only
    # under `if t.TYPE_CHECKING:` (typeshed's WSGI types are not importable at
    # run time) and the fields of NamedTuples.
    (
        "py:class",
        r"WSGIApplication|WSGIEnvironment|StartResponse|Engine|Connection|Response|datetime|timedelta"
        r"|Blueprint|RateLimitItem|Revocation|ErrorHandler",
    ),
    # Type variables and private base classes (shown in "Bases:") have no page.
    ("py:class", r"apikey_middleware\.[\w.]*\.(F|_\w+)"),
]
