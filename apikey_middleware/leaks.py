"""Leaked keys: telling which found tokens are ours, and the record of each leak.

Both ``apikey scan`` and the secret scanning endpoint come here: they
look the found tokens up in one query (:func:`look_up`), prove each
against its row (:func:`token_matches`, the one place that decides it),
then revoke and record in one transaction (:func:`record`). A leak is kept
with where it was found and what was done, for ``apikey show`` and the
dashboard (:func:`leaks_of`). No table here holds a key, nor a hash of a key
by itself.
"""

from __future__ import annotations

import hmac
import os
import typing as t
import urllib.parse
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

import sqlalchemy as sa
from sqlalchemy import exc
from sqlalchemy.orm import Session

from ._time import utcnow
from .changes import announce
from .keys import KeyType, ParsedKey, redact_keys
from .records import State, key_state
from .scan import Find, printable, unique_keys
from .schema import (
    MAX_SOURCE_LENGTH,
    MAX_URL_LENGTH,
    keys_table,
    leak_reports_table,
    leaks_table,
)

if t.TYPE_CHECKING:
    from .store import SQLAlchemyKeyStore

#: What was done about a leak: the key was revoked by this report, it was
#: left active (the endpoint's ``action="report"``), or it was already
#: revoked or expired.
Action = t.Literal["revoked", "reported", "none"]


_keys = keys_table
_leaks = leaks_table
_reports = leak_reports_table

_LOOK_UP = sa.select(
    _keys.c.id,
    _keys.c.key_type,
    _keys.c.key_hash,
    _keys.c.key_check,
    _keys.c.name,
    _keys.c.owner,
    _keys.c.expires_at,
    _keys.c.revoked_at,
).where(_keys.c.id.in_(sa.bindparam("ids", expanding=True)))


class KeyRow(t.NamedTuple):
    """What a leak check needs of a key's row."""

    id: str
    key_type: str
    key_hash: str
    key_check: str | None
    name: str
    owner: str | None
    expires_at: datetime | None
    revoked_at: datetime | None

    def __repr__(self) -> str:
        return f"KeyRow(id={self.id!r})"

    def state(self, now: datetime | None = None) -> State:
        """As :meth:`~apikey_middleware.records.KeyRecord.state`."""
        return key_state(self.revoked_at, self.expires_at, now)


def is_active(state: str) -> bool:
    """Whether a key in ``state`` is still accepted."""
    return state == "active"


@dataclass(frozen=True, slots=True)
class LeakRecord:
    """A recorded leak of a key: when it was reported, where, and what was done."""

    key_id: str
    reported_at: datetime
    url: str
    source: str
    action: Action

    def as_json(self) -> dict[str, str]:
        """The record as ``apikey show --json`` prints it."""
        return {
            "key_id": self.key_id,
            "reported_at": self.reported_at.isoformat(),
            "url": self.url,
            "source": self.source,
            "action": self.action,
        }


@dataclass(frozen=True, slots=True)
class LeakedKey:
    """What a host app is told of a leaked key (never the key itself).

    :attr revoked: whether this report revoked it (``False`` when it was left
        active, or was already revoked or expired).
    """

    key_id: str
    key_type: KeyType
    owner: str | None
    name: str
    url: str
    source: str
    revoked: bool


class ReplayedReport(Exception):
    """This report was acted on before."""


#: How long a report's digest is kept, so that a retry is not acted on again.
REPORT_MEMORY = timedelta(days=30)

#: Ids looked up in one query.
LOOK_UP_BATCH = 1000


def stored_text(text: str, limit: int) -> str:
    """Text from a report as a leak record keeps it: anything shaped like a
    key masked, and every character but printable ASCII percent-encoded
    (no control character, nothing a database's charset may refuse)."""
    if not (text.isascii() and text.isprintable()):
        text = urllib.parse.quote(text, safe="".join(map(chr, range(0x21, 0x7F))))
    return redact_keys(text)[:limit]


def look_up(store: SQLAlchemyKeyStore, key_ids: Iterable[str]) -> dict[str, KeyRow]:
    """The rows of those of ``key_ids`` that exist, in one query per
    :data:`LOOK_UP_BATCH` ids (drivers bound a statement's parameters)."""
    ids = sorted(set(key_ids))
    found: dict[str, KeyRow] = {}
    with store.engine.connect() as connection:
        for start in range(0, len(ids), LOOK_UP_BATCH):
            batch = ids[start : start + LOOK_UP_BATCH]
            found.update(
                (row.id, KeyRow(*row)) for row in connection.execute(_LOOK_UP, {"ids": batch})
            )
    return found


def refuted(store: SQLAlchemyKeyStore, key: ParsedKey, row: KeyRow) -> bool:
    """Whether ``key`` is shown not to be the key of ``row`` without bcrypt:
    another type, or a check value that does not match (one HMAC)."""
    if key.key_id != row.id or key.key_type != row.key_type:
        return True
    return row.key_check is not None and not hmac.compare_digest(
        store.hasher.check_value(key.key), row.key_check
    )


def token_matches(store: SQLAlchemyKeyStore, key: ParsedKey, row: KeyRow) -> bool:
    """Whether ``key`` is really the key of ``row``, not a look-alike with its id.

    The checksum is public, so anyone can make a well-formed string with a
    real key id; only the stored hash proves it. The row's check value
    refutes a look-alike first, for one HMAC; bcrypt (about 0.3 s at cost
    12) runs only for a token that passes it, or for a row made before
    check values, so callers still bound how often they call this.
    """
    return not refuted(store, key, row) and store.hasher.verify(key.key, row.key_hash)


def identify(
    store: SQLAlchemyKeyStore, keys: Sequence[ParsedKey], *, max_checks: int | None = None
) -> tuple[dict[str, KeyRow], list[ParsedKey]]:
    """Which of ``keys`` are keys of this store.

    Returns the rows of the keys found ours (by key string) and the keys
    left unchecked. Look-alikes are refuted first by their row's check
    value, one HMAC each, so they cannot spend the bound. Then at most
    ``max_checks`` keys are proved with bcrypt, keys of active rows first:
    those are the ones to act on. Past the bound, a key whose row's check
    value it matches is taken as ours (48 bits no forger can match without
    the key, in a report GitHub signed); one of a row made before check
    values is left unchecked.
    """
    rows = look_up(store, (key.key_id for key in keys))
    now = utcnow()
    candidates = [
        key
        for key in dict.fromkeys(keys)
        if key.key_id in rows and not refuted(store, key, rows[key.key_id])
    ]
    candidates.sort(key=lambda key: not is_active(rows[key.key_id].state(now)))
    if max_checks is not None:
        checked, rest = candidates[:max_checks], candidates[max_checks:]
    else:
        checked, rest = candidates, []
    ours = {
        key.key: rows[key.key_id] for key in checked if token_matches(store, key, rows[key.key_id])
    }
    ours.update((key.key, rows[key.key_id]) for key in rest if rows[key.key_id].key_check)
    unchecked = [key for key in rest if not rows[key.key_id].key_check]
    return ours, unchecked


def report_seen(store: SQLAlchemyKeyStore, digest: str) -> bool:
    """Whether the report with this body digest was acted on before."""
    with store.engine.connect() as connection:
        found = connection.execute(
            sa.select(_reports.c.digest).where(_reports.c.digest == digest)
        ).first()
    return found is not None


def record(
    store: SQLAlchemyKeyStore,
    found: Sequence[tuple[KeyRow, str, str]],
    *,
    revoke: bool,
    report_digest: str | None = None,
) -> dict[str, Action]:
    """Record leaks ``(row, url, source)`` and, with ``revoke``, revoke the
    active keys among them, all in one transaction; what was done per key id.

    With ``report_digest`` the report is recorded too, first: if it was
    recorded before (even by a concurrent request), nothing is done and
    :class:`ReplayedReport` is raised.
    """
    now = utcnow()
    actions: dict[str, Action] = {}
    with Session(store.engine) as session, session.begin():
        if report_digest is not None:
            # First, so that a concurrent copy of the report waits here on
            # the primary key, then fails, before it has done anything.
            try:
                session.execute(sa.insert(_reports).values(digest=report_digest, received_at=now))
            except exc.IntegrityError:
                raise ReplayedReport from None
            # Replays are refused for as long as GitHub may retry, and more:
            # older digests go, so the table stays small.
            session.execute(sa.delete(_reports).where(_reports.c.received_at < now - REPORT_MEMORY))
        for row, _, _ in found:
            if row.id in actions:
                continue
            if not is_active(row.state(now)):
                actions[row.id] = "none"
            elif not revoke:
                actions[row.id] = "reported"
            else:
                result = session.execute(
                    sa.update(_keys)
                    .where(_keys.c.id == row.id, _keys.c.revoked_at.is_(None))
                    .values(revoked_at=now)
                )
                revoked = t.cast(sa.CursorResult[t.Any], result).rowcount == 1
                actions[row.id] = "revoked" if revoked else "none"
                if revoked:
                    # Processes in channel mode learn of it as of a revoke().
                    announce(session.connection(), row.id)
        if found:
            session.execute(
                sa.insert(_leaks),
                [
                    {
                        "key_id": row.id,
                        "reported_at": now,
                        "url": stored_text(url, MAX_URL_LENGTH),
                        "source": stored_text(source, MAX_SOURCE_LENGTH),
                        "action": actions[row.id],
                        "report_digest": report_digest,
                    }
                    for row, url, source in found
                ],
            )
    return actions


def leaks_of(
    store: SQLAlchemyKeyStore, key_id: str, *, limit: int | None = None
) -> list[LeakRecord]:
    """The recorded leaks of ``key_id``, newest first (at most ``limit``)."""
    query = (
        sa.select(
            _leaks.c.key_id, _leaks.c.reported_at, _leaks.c.url, _leaks.c.source, _leaks.c.action
        )
        .where(_leaks.c.key_id == key_id)
        .order_by(_leaks.c.reported_at.desc(), _leaks.c.id.desc())
        .limit(limit)
    )
    with store.engine.connect() as connection:
        return [
            LeakRecord(row.key_id, row.reported_at, row.url, row.source, t.cast(Action, row.action))
            for row in connection.execute(query)
        ]


def count_leaks(store: SQLAlchemyKeyStore, key_id: str) -> int:
    """How many leaks of ``key_id`` are recorded."""
    query = sa.select(sa.func.count()).where(_leaks.c.key_id == key_id)
    with store.engine.connect() as connection:
        return int(connection.execute(query).scalar_one())


def leaked_key(row: KeyRow, url: str, source: str, action: Action) -> LeakedKey:
    """The host app's view of one leak."""
    return LeakedKey(
        row.id,
        t.cast(KeyType, row.key_type),
        row.owner,
        row.name,
        stored_text(url, MAX_URL_LENGTH),
        stored_text(source, MAX_SOURCE_LENGTH),
        action == "revoked",
    )


#: A found key's state: as a record's, or ``"unknown"``: not a key of this store.
FoundState = t.Literal["active", "expired", "revoked", "unknown"]


def check_finds(
    store: SQLAlchemyKeyStore,
    finds: Sequence[Find],
    *,
    revoke: Callable[[list[str]], bool] | None = None,
) -> list[tuple[Find, FoundState, bool]]:
    """Each find with its key's state here and whether it was revoked now.

    With ``revoke``, the active keys found are revoked, each place they were
    found recorded as a leak (source ``apikey scan``), if ``revoke(key_ids)``
    agrees.
    """
    ours, _ = identify(store, unique_keys(finds))
    now = utcnow()
    active = [
        (ours[find.key.key], find)
        for find in finds
        if find.key.key in ours and is_active(ours[find.key.key].state(now))
    ]
    actions: dict[str, Action] = {}
    if revoke is not None and active and revoke(sorted({row.id for row, _ in active})):
        found = [
            (row, printable(f"{os.path.abspath(find.path)}:{find.line}"), "apikey scan")
            for row, find in active
        ]
        actions = record(store, found, revoke=True)
    checked: list[tuple[Find, FoundState, bool]] = []
    for find in finds:
        row = ours.get(find.key.key)
        if row is None:
            checked.append((find, "unknown", False))
        else:
            checked.append((find, row.state(now), actions.get(row.id) == "revoked"))
    return checked
