"""Writing a new key's row: drawn, hashed, stored with its change announced,
and, for a rotation, the old key retired in the same transaction."""

from __future__ import annotations

import typing as t
from collections.abc import Callable
from datetime import datetime, timedelta

import sqlalchemy as sa
from sqlalchemy import exc
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from ._time import utcnow
from .changes import announce
from .errors import AlreadyRotatedError
from .hashing import KeyHasher
from .keys import generate_key
from .records import IssuedKey, KeyRecord
from .schema import ApiKey

_CREATE_ATTEMPTS = 3

#: Changes another row in the new key's transaction (``session``, ``now``).
Retire = Callable[[Session, datetime], None]


def issue_key(
    engine: Engine,
    hasher: KeyHasher,
    *,
    name: str,
    key_type: str,
    scopes: tuple[str, ...],
    owner: str | None,
    expires_at: datetime | None,
    rate_limit: str | None = None,
    replaces: str | None = None,
    retire: Retire | None = None,
) -> IssuedKey:
    """Make, hash and store a key of checked values; the only place its
    secret is ever returned."""
    for attempt in range(1, _CREATE_ATTEMPTS + 1):
        parsed = generate_key(key_type)
        now = utcnow()
        model = ApiKey(
            id=parsed.key_id,
            name=name,
            key_type=key_type,
            key_hash=hasher.hash(parsed.key),
            key_check=hasher.check_value(parsed.key),
            scopes=" ".join(scopes),
            owner=owner,
            created_at=now,
            expires_at=expires_at,
            replaces=replaces,
            rate_limit=rate_limit,
        )
        try:
            with Session(engine, expire_on_commit=False) as session, session.begin():
                if retire is not None:
                    retire(session, now)
                session.add(model)
                announce(session.connection(), parsed.key_id)
        except exc.IntegrityError:
            # Two ids drawn alike (about 2**-72): draw again.
            if attempt == _CREATE_ATTEMPTS:
                raise
            continue
        return IssuedKey(parsed.key, KeyRecord.from_model(model))
    raise AssertionError("unreachable")  # pragma: no cover


def successor_of(connection: sa.Connection | Session, key_id: str) -> str | None:
    """The id of a key that replaces ``key_id``, if one does."""
    found = connection.execute(
        sa.select(ApiKey.id).where(ApiKey.replaces == key_id).order_by(ApiKey.id).limit(1)
    ).first()
    return None if found is None else str(found[0])


def retirement(old: KeyRecord, grace: timedelta) -> Retire:
    """What a rotation does to the old key: revoke it now (no grace), or
    let it expire at ``now + grace`` (or sooner, if it was to expire
    before). Refused if it was revoked or rotated meanwhile."""

    def retire(session: Session, now: datetime) -> None:
        if grace:
            end = now + grace
            if old.expires_at is not None and old.expires_at < end:
                end = old.expires_at
            change: dict[str, datetime] = {"expires_at": end}
        else:
            change = {"revoked_at": now}
        result = session.execute(
            sa.update(ApiKey)
            .where(ApiKey.id == old.id, ApiKey.revoked_at.is_(None))
            .values(**change)
        )
        if t.cast(sa.CursorResult[t.Any], result).rowcount != 1:
            raise ValueError(f"key {old.id!r} is revoked and cannot be rotated")
        # Read once the row is locked by the update: a concurrent rotation
        # of the same key has committed its successor by then.
        successor = successor_of(session, old.id)
        if successor is not None:
            raise AlreadyRotatedError(old.id, successor)
        announce(session.connection(), old.id)

    return retire
