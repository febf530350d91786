from __future__ import annotations

import bcrypt
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


class CountingCheckpw:
    """The real ``bcrypt.checkpw``, counting its calls."""

    def __init__(self) -> None:
        self.calls = 0
        self._checkpw = bcrypt.checkpw

    def __call__(self, password: bytes, hashed: bytes) -> bool:
        self.calls += 1
        return bool(self._checkpw(password, hashed))


@pytest.fixture
def checkpw(monkeypatch: pytest.MonkeyPatch) -> CountingCheckpw:
    counter = CountingCheckpw()
    monkeypatch.setattr(bcrypt, "checkpw", counter)
    return counter


def test_bcrypt_runs_once_per_verified_key(key: str, checkpw: CountingCheckpw) -> None:
    hasher = KeyHasher(4)
    hashed = hasher.hash(key)
    assert all(hasher.verify(key, hashed) for _ in range(5))
    assert checkpw.calls == 1


def test_failures_are_not_remembered_as_successes(key: str, checkpw: CountingCheckpw) -> None:
    hasher = KeyHasher(4)
    hashed = hasher.hash(key)
    wrong = generate_key("live").key
    assert not hasher.verify(wrong, hashed)
    assert not hasher.verify(wrong, hashed)
    assert checkpw.calls == 2


def test_memory_is_tied_to_the_stored_hash(key: str, checkpw: CountingCheckpw) -> None:
    hasher = KeyHasher(4)
    assert hasher.verify(key, hasher.hash(key))
    other_hash = KeyHasher(4).hash(generate_key("live").key)
    assert not hasher.verify(key, other_hash)
    assert checkpw.calls == 2


def test_memory_is_bounded(checkpw: CountingCheckpw) -> None:
    hasher = KeyHasher(4, cache_size=2)
    pairs = [(k, hasher.hash(k)) for k in (generate_key("test").key for _ in range(3))]
    for k, h in pairs:
        assert hasher.verify(k, h)
    assert hasher.verify(*pairs[0])
    assert checkpw.calls == 4


def test_cache_size_zero_runs_bcrypt_every_time(key: str, checkpw: CountingCheckpw) -> None:
    hasher = KeyHasher(4, cache_size=0)
    hashed = hasher.hash(key)
    assert hasher.verify(key, hashed)
    assert hasher.verify(key, hashed)
    assert checkpw.calls == 2
