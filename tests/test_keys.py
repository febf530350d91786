from __future__ import annotations

import math
import re
import string
from collections.abc import Callable

import pytest

from apikey_middleware.keys import (
    CHECKSUM_LENGTH,
    KEY_LENGTH,
    ParsedKey,
    display_prefix,
    generate_key,
    is_key_id,
    new_key_id,
    parse_key,
)


@pytest.mark.parametrize("key_type", ["test", "live"])
def test_generated_key_has_the_documented_form(key_type: str) -> None:
    key = generate_key(key_type)
    assert key.key.startswith(f"sk_{key_type}_")
    assert len(key.key) == KEY_LENGTH <= 72
    assert re.fullmatch(r"[A-Za-z0-9_]+", key.key)
    assert key.key[8:22] == key.key_id
    assert key.key_type == key_type
    assert parse_key(key.key) == key


def test_generated_keys_and_ids_differ_every_time() -> None:
    keys = {generate_key("live").key for _ in range(200)}
    ids = {new_key_id() for _ in range(200)}
    assert len(keys) == 200
    assert len(ids) == 200


def test_secret_part_carries_at_least_160_bits() -> None:
    key = generate_key("test").key
    secret = key[len("sk_test_") + 15 : -CHECKSUM_LENGTH]
    bits = len(secret) * math.log2(len(string.ascii_letters + string.digits))
    assert len(secret) >= 28
    assert bits >= 160


def test_unknown_key_type_is_refused() -> None:
    with pytest.raises(ValueError, match="key_type"):
        generate_key("prod")


def _swap_type(key: str) -> str:
    return key.replace("sk_live_", "sk_test_", 1)


def _change_char(index: int) -> Callable[[str], str]:
    def mutate(key: str) -> str:
        index_ = index % len(key)
        char = key[index_]
        other = "b" if char != "b" else "c"
        changed = key[:index_] + other + key[index_ + 1 :]
        assert len(changed) == len(key)
        return changed

    return mutate


MUTATORS: list[object] = [
    pytest.param(lambda k: "", id="empty"),
    pytest.param(lambda k: k[:-1], id="truncated"),
    pytest.param(lambda k: k + "a", id="one-char-too-many"),
    pytest.param(lambda k: k[1:] + "a", id="shifted"),
    pytest.param(_swap_type, id="live-body-with-test-prefix"),
    pytest.param(lambda k: "pk" + k[2:], id="scrambled-prefix"),
    pytest.param(lambda k: k.upper(), id="upper-cased"),
    pytest.param(_change_char(10), id="typo-in-id"),
    pytest.param(_change_char(30), id="typo-in-secret"),
    pytest.param(_change_char(-1), id="typo-in-checksum"),
    pytest.param(lambda k: k[:20] + "\u00e9" + k[21:], id="non-ascii"),
    pytest.param(lambda k: k[:20] + "-" + k[21:], id="dash"),
    pytest.param(lambda k: k[:20] + "\x00" + k[21:], id="nul-byte"),
    pytest.param(lambda k: k[:-2] + "\t" + k[-1:], id="tab"),
    pytest.param(lambda k: k * 100, id="absurdly-long"),
]


@pytest.mark.parametrize("mutate", MUTATORS)
def test_mutated_key_is_rejected_offline(mutate: Callable[[str], str]) -> None:
    key = generate_key("live").key
    assert parse_key(mutate(key)) is None


def test_parsed_key_repr_never_shows_the_key() -> None:
    key = generate_key("live")
    assert key.key not in repr(key)
    assert key.key[-20:] not in repr(key)
    assert isinstance(key, ParsedKey)


def test_key_id_form() -> None:
    assert is_key_id(new_key_id())
    assert not is_key_id("ABCDEFGHIJKLMN")
    assert not is_key_id("abc")
    assert not is_key_id(generate_key("test").key)


def test_display_prefix_is_short_and_public() -> None:
    key = generate_key("live")
    prefix = display_prefix("live", key.key_id)
    assert prefix == f"sk_live_{key.key_id[:4]}…"
    assert key.key.startswith(prefix[:-1])
