"""The ``APIKEY_*`` settings: read from a mapping (a Flask ``config``), each
checked before anything is built from it, so an error names its setting."""

from __future__ import annotations

import os
import typing as t
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import timedelta

import sqlalchemy as sa
from sqlalchemy import exc

from ._checks import integer, number
from ._engine import driver_hint
from .changes import REVOCATION_MODES
from .counters import DEFAULT_STORAGE, CounterStorage, storage_scheme
from .hashing import DEFAULT_ROUNDS
from .keys import KEY_TYPES
from .ratelimit import check_rate_limit
from .verifier import DEFAULT_CACHE_SIZE


def _number(name: str, value: object) -> float:
    return number(name, value)


def _integer(low: int, high: int | None = None) -> Callable[[str, object], int]:
    return lambda name, value: integer(name, value, low=low, high=high)


def _flag(name: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be True or False, not {value!r}")
    return value


def _retention(name: str, value: object) -> timedelta | None:
    from .cli._common import parse_duration  # click, only when it is asked for

    if value is None or isinstance(value, timedelta):
        retention = value
    elif isinstance(value, str):
        try:
            retention = parse_duration(value)
        except ValueError as error:
            raise ValueError(f"{name}: {error}") from None
    else:
        raise ValueError(f"{name} must be a timedelta or a duration such as 90d")
    if retention is not None and retention <= timedelta(0):
        raise ValueError(f"{name} must be longer than none")
    return retention


def _database_url(name: str, value: object) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValueError(f"{name} must be a string, not {type(value).__name__}")
    try:
        url = sa.make_url(value)
        url.get_dialect()
    except exc.ArgumentError:
        raise ValueError(f"{name} is not a database URL") from None
    except (exc.NoSuchModuleError, ImportError) as error:
        hint = driver_hint(url)
        raise ValueError(f"{name}: no database driver here for it ({error}){hint}") from None
    return value


def _pepper(name: str, value: object) -> bytes | None:
    if value is None or isinstance(value, bytes):
        return value or None
    if isinstance(value, str):
        return value.encode("utf-8") or None
    raise ValueError(f"{name} must be bytes or str, not {type(value).__name__}")


def _key_types(name: str, value: object) -> tuple[str, ...]:
    if isinstance(value, str) or not isinstance(value, Iterable):
        raise ValueError(f"{name} must be a list of key types, not {value!r}")
    types = tuple(value)
    if not types or not set(types) <= set(KEY_TYPES):
        raise ValueError(f"{name} must hold only {' and '.join(KEY_TYPES)}, not {types!r}")
    return types


def _revocation(name: str, value: object) -> str | None:
    if value is None:
        return None
    if value not in REVOCATION_MODES:
        raise ValueError(f"{name} must be one of {', '.join(REVOCATION_MODES)}, not {value!r}")
    return str(value)


def _rate_limit(name: str, value: object) -> str | None:
    return check_rate_limit(name, value)


def _storage(name: str, value: object) -> str:
    storage_scheme(name, value)
    return t.cast(str, value)


def _prefix(name: str, value: object) -> str:
    if not isinstance(value, str) or not value or len(value) > 100 or not value.isprintable():
        raise ValueError(f"{name} must be a short printable string, not {value!r}")
    return value


# name -> (default, check): the one list of settings, in the order the
# configuration reference gives them.
SETTINGS: dict[str, tuple[object, Callable[[str, t.Any], t.Any]]] = {
    "APIKEY_DATABASE_URL": (None, _database_url),
    "APIKEY_BCRYPT_ROUNDS": (DEFAULT_ROUNDS, _integer(4, 31)),
    "APIKEY_PEPPER": (None, _pepper),
    "APIKEY_CACHE_SIZE": (DEFAULT_CACHE_SIZE, _integer(0)),
    "APIKEY_TIMEOUT": (5.0, _number),
    "APIKEY_RETRY_AFTER": (5, _integer(1)),
    "APIKEY_KEY_TYPES": (KEY_TYPES, _key_types),
    "APIKEY_HIDE_CREDENTIALS": (False, _flag),
    "APIKEY_PREFLIGHT": (False, _flag),
    "APIKEY_LOG_USAGE": (True, _flag),
    "APIKEY_USAGE_RETENTION": (None, _retention),
    "APIKEY_REVOCATION": (None, _revocation),
    "APIKEY_POLL_INTERVAL": (1.0, _number),
    "APIKEY_THROTTLE_LIMIT": (0, _integer(0)),
    "APIKEY_THROTTLE_WINDOW": (60, _number),
    "APIKEY_DEFAULT_RATE_LIMIT": (None, _rate_limit),
    "APIKEY_RATE_LIMIT_STORAGE": (DEFAULT_STORAGE, _storage),
    "APIKEY_RATE_LIMIT_PREFIX": ("apikey", _prefix),
}


@dataclass(frozen=True)
class Settings:
    """Checked ``APIKEY_*`` settings."""

    database_url: str | None
    bcrypt_rounds: int
    pepper: bytes | None
    cache_size: int
    timeout: float
    retry_after: int
    key_types: tuple[str, ...]
    hide_credentials: bool
    preflight: bool
    log_usage: bool
    usage_retention: timedelta | None
    revocation: t.Literal["immediate", "channel"] | None
    poll_interval: float
    throttle_limit: int
    throttle_window: float
    default_rate_limit: str | None
    rate_limit_storage: str
    rate_limit_prefix: str

    def __repr__(self) -> str:
        # The pepper is a secret.
        return f"Settings(database_url={self.database_url!r}, revocation={self.revocation!r})"

    def counter_storage(self) -> CounterStorage:
        """The counter storage of rate limits and the throttle."""
        return CounterStorage(self.rate_limit_storage, prefix=self.rate_limit_prefix)

    @classmethod
    def from_mapping(cls, config: Mapping[str, object]) -> Settings:
        """Check each setting of ``config`` (its default where missing).

        :raises ValueError: a setting is invalid; the message names it.
        """
        values = {
            name.removeprefix("APIKEY_").lower(): check(name, config.get(name, default))
            for name, (default, check) in SETTINGS.items()
        }
        if values["database_url"] is None and os.environ.get("APIKEY_DATABASE_URL"):
            # Where the config names none, the database the `apikey` command uses.
            values["database_url"] = _database_url(
                "APIKEY_DATABASE_URL (environment)", os.environ["APIKEY_DATABASE_URL"]
            )
        return cls(**values)
