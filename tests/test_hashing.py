from __future__ import annotations

import pytest

from apikey_middleware.hashing import KeyHasher
from apikey_middleware.keys import generate_key


@pytest.fixture
def key() -> str:
    return generate_key("live").key


def test_hash_verifies_its_key_only(key: str) -> None:
    hasher = KeyHasher(4)
    hashed = hasher.hash(key)
    assert hashed.startswith("$2b$04$")
    assert key not in hashed
    assert hasher.verify(key, hashed)
    assert not hasher.verify(generate_key("live").key, hashed)


def test_rounds_default_to_twelve_and_are_configurable() -> None:
    assert KeyHasher().rounds == 12
    assert KeyHasher(5).hash("x").startswith("$2b$05$")


@pytest.mark.parametrize("rounds", [3, 32, "12", 4.0, True])
def test_bad_rounds_are_refused(rounds: object) -> None:
    with pytest.raises(ValueError, match="rounds"):
        KeyHasher(rounds)  # type: ignore[arg-type]


def test_pepper_is_part_of_the_hash(key: str) -> None:
    peppered = KeyHasher(4, b"server secret")
    hashed = peppered.hash(key)
    assert peppered.verify(key, hashed)
    assert not KeyHasher(4, b"another secret").verify(key, hashed)
    assert not KeyHasher(4).verify(key, hashed)


def test_pepper_comes_from_the_environment(key: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("APIKEY_PEPPER", "from env")
    hashed = KeyHasher(4).hash(key)
    assert KeyHasher(4, b"from env").verify(key, hashed)
    monkeypatch.delenv("APIKEY_PEPPER")
    assert not KeyHasher(4).verify(key, hashed)


def test_pepper_must_be_bytes() -> None:
    with pytest.raises(TypeError, match="bytes"):
        KeyHasher(4, "text")  # type: ignore[arg-type]


def test_repr_hides_the_pepper() -> None:
    assert "server secret" not in repr(KeyHasher(4, b"server secret"))


@pytest.mark.parametrize(
    "hashed",
    [
        pytest.param("", id="empty"),
        pytest.param("not a hash", id="garbage"),
        pytest.param("$2b$04$" + "x" * 10, id="truncated"),
        pytest.param("$2b$99$" + "a" * 53, id="bad-cost"),
        pytest.param("\u00e9" * 60, id="non-ascii"),
    ],
)
def test_damaged_stored_hash_is_a_mismatch_not_an_error(key: str, hashed: str) -> None:
    assert KeyHasher(4).verify(key, hashed) is False


@pytest.mark.parametrize(
    "presented",
    [
        pytest.param("\x00" * 100, id="nul-bytes"),
        pytest.param("a" * 10_000, id="long"),
        pytest.param("\udcff", id="lone-surrogate"),
        pytest.param("", id="empty"),
    ],
)
def test_hostile_presented_key_is_a_mismatch_not_an_error(presented: str) -> None:
    hasher = KeyHasher(4)
    assert hasher.verify(presented, hasher.hash("something")) is False
