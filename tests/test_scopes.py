"""Scope grants, tested directly: a wildcard covers its own family only."""

from __future__ import annotations

import pytest

from apikey_middleware.principal import Principal, scope_granted


@pytest.mark.parametrize(
    ("granted", "wanted", "expected"),
    [
        pytest.param({"clients:read"}, "clients:read", True, id="exact"),
        pytest.param({"clients:read"}, "clients:write", False, id="sibling"),
        pytest.param({"clients:*"}, "clients:write", True, id="family-wildcard"),
        pytest.param({"clients:*"}, "billing:read", False, id="wildcard-of-another-family"),
        pytest.param({"clients:*"}, "clientsx:read", False, id="wildcard-of-a-longer-name"),
        pytest.param({"clients:*"}, "clients", False, id="wildcard-not-the-family-itself"),
        pytest.param({"clients:*"}, "clients:notes:read", True, id="wildcard-covers-depth"),
        pytest.param({"clients:notes:*"}, "clients:read", False, id="deep-wildcard-stays-deep"),
        pytest.param({"clients:notes:*"}, "clients:notes:read", True, id="deep-wildcard"),
        pytest.param({"*"}, "billing:refunds:write", True, id="star-covers-all"),
        pytest.param({"read"}, "clients:read", False, id="last-part-is-not-a-grant"),
        pytest.param({"clients:read"}, "clients:*", False, id="a-wildcard-is-not-wanted-by-parts"),
        pytest.param(set(), "clients:read", False, id="nothing-granted"),
    ],
)
def test_scope_granted(granted: set[str], wanted: str, expected: bool) -> None:
    assert scope_granted(frozenset(granted), wanted) is expected


def test_several_wanted_scopes_need_every_one() -> None:
    principal = Principal("id", "n", "test", frozenset({"clients:*", "billing:read"}))
    assert principal.has_scopes("clients:write", "billing:read")
    assert not principal.has_scopes("clients:write", "billing:write")
    assert principal.has_scopes()
