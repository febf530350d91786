"""What the store hands out: key records, and a key just issued."""

from __future__ import annotations

import enum
import re
import typing as t
from dataclasses import dataclass, field
from datetime import datetime

from ._time import utcnow
from .keys import KeyType, display_prefix, holds_key
from .schema import MAX_NAME_LENGTH, ApiKey

State = t.Literal["active", "expired", "revoked"]


class Unset(enum.Enum):
    """The type of :data:`UNSET`."""

    UNSET = "UNSET"


#: "Not given": what :meth:`~apikey_middleware.store.SQLAlchemyKeyStore.update_key`
#: leaves as it is (``None`` is a value there: no expiry).
UNSET = Unset.UNSET

_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def key_state(
    revoked_at: datetime | None, expires_at: datetime | None, now: datetime | None = None
) -> State:
    """The state of a key revoked and expiring at these times."""
    if revoked_at is not None:
        return "revoked"
    if expires_at is not None and expires_at <= (now or utcnow()):
        return "expired"
    return "active"


@dataclass(frozen=True, slots=True)
class KeyRecord:
    """What the store knows of a key: everything but the secret."""

    id: str
    name: str
    key_type: KeyType
    scopes: tuple[str, ...]
    owner: str | None
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None
    last_used_at: datetime | None
    replaces: str | None
    #: Its own rate limit, such as ``"100/minute"``, or ``None``: the
    #: middleware's ``default_rate_limit`` applies.
    rate_limit: str | None = None

    @property
    def prefix(self) -> str:
        """The short display form, such as ``sk_live_ab12…``."""
        return display_prefix(self.key_type, self.id)

    def state(self, now: datetime | None = None) -> State:
        """``revoked``, ``expired`` or ``active`` (at ``now``, by default the current time)."""
        return key_state(self.revoked_at, self.expires_at, now)

    @classmethod
    def from_model(cls, model: ApiKey) -> KeyRecord:
        """The record of a row of the keys table."""
        return cls(
            id=model.id,
            name=model.name,
            key_type=t.cast(KeyType, model.key_type),
            scopes=tuple(model.scopes.split()),
            owner=model.owner,
            created_at=model.created_at,
            expires_at=model.expires_at,
            revoked_at=model.revoked_at,
            last_used_at=model.last_used_at,
            replaces=model.replaces,
            rate_limit=model.rate_limit,
        )


@dataclass(frozen=True, slots=True)
class IssuedKey:
    """A key just made: the only time its secret is known.

    ``key`` is the full secret to hand to the client; it is kept out of
    ``repr()``.
    """

    key: str = field(repr=False)
    record: KeyRecord

    @property
    def id(self) -> str:
        """The public key id."""
        return self.record.id


def check_name(what: str, value: object, *, optional: bool = False) -> str | None:
    """A key's name or owner, stripped, or a ``ValueError`` that does not
    repeat it (it may be a key pasted in the wrong place)."""
    if value is None and optional:
        return None
    if not isinstance(value, str) or not value.strip() or len(value) > MAX_NAME_LENGTH:
        raise ValueError(
            f"{what} must be a non-empty string of at most {MAX_NAME_LENGTH} characters"
        )
    if holds_key(value):
        raise ValueError(f"{what} must not hold an API key (the value is not shown)")
    if _CONTROL_RE.search(value):
        raise ValueError(f"{what} must not hold control characters")
    return value.strip()
