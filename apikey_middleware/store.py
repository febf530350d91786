"""The key store: keys kept as bcrypt hashes in any SQLAlchemy database.

:class:`SQLAlchemyKeyStore` is the one object users make. It knows nothing
of HTTP: it manages key records here, hands the request path to its
:class:`~apikey_middleware.verifier.Verifier`, and the usage log to
:class:`~apikey_middleware.usage_log.UsageLog` (its methods for usage are
those of :class:`~apikey_middleware.usage_queries.UsageQueries`). Its tables
are in :mod:`~apikey_middleware.schema`.
"""

from __future__ import annotations

import os
import typing as t
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta

import sqlalchemy as sa
from sqlalchemy import exc
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from ._checks import integer, number
from ._engine import SharedConnectionPool, create_store_engine, sqlite_file_missing
from ._issue import issue_key, retirement, successor_of
from ._time import expiry, utcnow
from .changes import (
    REVOCATION_MODES,
    ChangeChannel,
    Revocation,
    announce,
    channel_for,
    default_revocation,
)
from .errors import AlreadyRotatedError, KeyNotFoundError, StoreUnavailableError
from .hashing import DEFAULT_ROUNDS, KeyHasher
from .keys import KEY_TYPES, ParsedKey, is_key_id, shown_safely
from .pepper import PepperCheck
from .principal import Principal, normalize_scopes
from .ratelimit import check_rate_limit
from .records import UNSET, IssuedKey, KeyRecord, Unset, check_name
from .schema import ApiKey, keys_table, metadata, upgrade
from .usage_log import UsageLog
from .usage_queries import UsageQueries
from .verifier import DEFAULT_CACHE_SIZE, Verifier, describe_fault

_SCHEMA_TIMEOUT = 60.0


class SQLAlchemyKeyStore(UsageQueries):
    """API keys in a SQLAlchemy database, kept only as bcrypt hashes.

    :param url_or_engine: a database URL, or an :class:`~sqlalchemy.engine.Engine`
        to use as it is. From a URL the store makes its own engine, with
        every wait bounded by ``timeout``: connecting, the pool, a locked
        SQLite file, and on a database server each statement and lock wait
        and a connection that stops answering.
    :param bcrypt_rounds: bcrypt's cost for new keys (4 to 31).
    :param pepper: a server-side secret mixed into every hash and never
        stored; defaults to ``APIKEY_PEPPER``. Keys hashed with one pepper
        only verify with the same pepper: the database records a keyed
        fingerprint of it, and a store with another is refused
        (:mod:`~apikey_middleware.pepper`).
    :param cache_size: how many verified keys each process remembers, so
        bcrypt runs once per key rather than once per request; as many
        recently failed keys; and, in channel mode, as many key rows.
    :param revocation: ``"immediate"`` reads the key's row on every
        request, so a revoke holds for the very next request in every
        process. ``"channel"`` keeps rows in memory and rereads them only
        when :mod:`~apikey_middleware.changes` says the database changed:
        at once on SQLite, when the notification arrives on PostgreSQL
        (milliseconds), within ``poll_interval`` on MySQL and MariaDB.
    :param poll_interval: seconds a cached row may be used where the
        database offers no change notice (MySQL, MariaDB).
    :param bcrypt_concurrency: how many bcrypt checks may run at once in
        this process (default: half the CPUs, at least one); a check that
        waits longer than ``timeout`` is refused as unavailable.
    :param timeout: seconds any wait on the database may take before the
        store gives up (bounds set on an engine the store makes).

    Several processes may share one database: in immediate mode every
    request reads its key's row; in channel mode a process learns of a
    change before it uses a cached row again (see ``revocation``).

    .. code-block:: python

        store = SQLAlchemyKeyStore("sqlite:///apikeys.db")
        store.create_schema()
        issued = store.create_key("billing", key_type="live", scopes=["clients:read"])
        print(issued.key)  # shown once; only its hash is stored
    """

    #: The store's tables (for Alembic: ``target_metadata = store.metadata``).
    metadata: t.ClassVar[sa.MetaData] = metadata

    def __init__(
        self,
        url_or_engine: str | sa.URL | Engine,
        *,
        bcrypt_rounds: int = DEFAULT_ROUNDS,
        pepper: bytes | None = None,
        cache_size: int = DEFAULT_CACHE_SIZE,
        timeout: float = 5.0,
        revocation: Revocation | None = None,
        poll_interval: float = 1.0,
        bcrypt_concurrency: int | None = None,
    ) -> None:
        if revocation is not None and revocation not in REVOCATION_MODES:
            raise ValueError(
                f"revocation must be one of {', '.join(REVOCATION_MODES)}, not {revocation!r}"
            )
        number("poll_interval", poll_interval)
        number("timeout", timeout)
        if bcrypt_concurrency is None:
            bcrypt_concurrency = max(1, (os.cpu_count() or 2) // 2)
        integer("bcrypt_concurrency", bcrypt_concurrency)
        integer("cache size", cache_size, low=0)
        self.hasher = KeyHasher(bcrypt_rounds, pepper)
        if isinstance(url_or_engine, Engine):
            self.engine = url_or_engine
            self._owns_engine = False
        else:
            self.engine = create_store_engine(url_or_engine, timeout=timeout)
            self._owns_engine = True
        self.timeout = timeout
        if revocation is None:
            revocation = default_revocation(self.engine)
        #: ``"immediate"`` or ``"channel"``: the mode the store runs in.
        self.revocation: Revocation = revocation
        self._pepper = PepperCheck(self.engine, self.hasher)
        #: Where channel mode hears of changes (``None`` in immediate mode).
        self.channel: ChangeChannel | None = None
        if revocation == "channel":
            self.channel = channel_for(self.engine, poll_interval=poll_interval, timeout=timeout)
        #: The request path: what :meth:`authenticate` asks.
        self.verifier = Verifier(
            self.engine,
            self.hasher,
            cache_size=cache_size,
            timeout=timeout,
            bcrypt_concurrency=bcrypt_concurrency,
            channel=self.channel,
            on_verified=self._pepper.proven,
            on_check_failed=self._pepper.suspect,
        )
        self._usage = UsageLog(self.engine)
        self._closed = False

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.url!r})"

    @property
    def url(self) -> str:
        """The database's URL, password hidden: for messages."""
        return self.engine.url.render_as_string(hide_password=True)

    def check_setup(self) -> bool:
        """Whether the database is set up for this store: ``False`` if its
        tables are missing (run ``create_schema()`` / ``apikey init-db``; a
        missing SQLite file is not created). For start-up.

        :raises ValueError: the database's keys were made with another
            pepper (the message names ``APIKEY_PEPPER``).
        :raises StoreUnavailableError: the database did not answer.
        """
        if sqlite_file_missing(self.engine.url):
            return False
        try:
            with self.engine.connect() as connection:
                if not sa.inspect(connection).has_table(keys_table.name):
                    return False
                self._pepper.check(connection)
        except exc.SQLAlchemyError as error:
            raise StoreUnavailableError(describe_fault(error)) from None
        return True

    def create_schema(self) -> None:
        """Create the store's tables where they are missing, and add the
        columns a database made by an earlier release lacks (idempotent).

        Schema changes may wait for other sessions' locks far longer than a
        request may, so from an engine the store made they run on a
        connection of their own with a wait of at least a minute.

        :raises ValueError: the database's keys were made with another
            pepper (the message names ``APIKEY_PEPPER``).
        """
        engine = self.engine
        if self._owns_engine and not isinstance(engine.pool, SharedConnectionPool):
            engine = create_store_engine(engine.url, timeout=max(self.timeout, _SCHEMA_TIMEOUT))
        try:
            with engine.begin() as connection:
                upgrade(connection)
                self._pepper.check(connection)
        finally:
            if engine is not self.engine:
                engine.dispose()

    def close(self) -> None:
        """Stop the change channel; close the pooled connections of an
        engine the store made."""
        self._closed = True
        if self.channel is not None:
            self.channel.close()
        if self._owns_engine:
            self.engine.dispose()

    @contextmanager
    def _session(self) -> Iterator[Session]:
        with Session(self.engine, expire_on_commit=False) as session:
            yield session

    def authenticate(self, key: ParsedKey | str) -> Principal:
        """Return the principal of ``key`` (see
        :meth:`~apikey_middleware.verifier.Verifier.authenticate`).

        :raises ~apikey_middleware.errors.InvalidKeyError: the key is not valid.
        :raises ~apikey_middleware.errors.StoreUnavailableError: the
            database did not answer.
        """
        return self.verifier.authenticate(key)

    def create_key(
        self,
        name: str,
        *,
        key_type: str = "test",
        scopes: str | Iterable[str] = (),
        owner: str | None = None,
        expires_at: datetime | timedelta | None = None,
        rate_limit: str | None = None,
    ) -> IssuedKey:
        """Make and store a new key; the returned
        :class:`~apikey_middleware.records.IssuedKey` is the only place its
        secret will ever be.

        :param expires_at: an aware datetime, or a timedelta from now; in
            the future.
        :param rate_limit: the key's own rate limit in the ``limits``
            notation, such as ``"100/minute"`` or ``"10/second;1000/hour"``
            (see :mod:`~apikey_middleware.ratelimit`); ``None``: the
            middleware's ``default_rate_limit`` applies.
        :raises ValueError: on a bad name, type, scope, owner, expiry or
            rate limit, or when the database's usable keys were made with
            another pepper.
        """
        if key_type not in KEY_TYPES:
            raise ValueError(
                f"key_type must be one of {', '.join(KEY_TYPES)}, not {shown_safely(str(key_type))}"
            )
        name = t.cast(str, check_name("name", name))
        scope_list = normalize_scopes(scopes)
        owner = check_name("owner", owner, optional=True)
        expiry_at = expiry("expires_at", expires_at)
        limit = check_rate_limit("rate_limit", rate_limit)
        self._pepper.claim()
        return issue_key(
            self.engine,
            self.hasher,
            name=name,
            key_type=key_type,
            scopes=scope_list,
            owner=owner,
            expires_at=expiry_at,
            rate_limit=limit,
        )

    def keys_without_check_value(self) -> list[str]:
        """Ids of the keys not revoked that were made before check values
        (0.1.0): until each is used once, a wrong secret for it costs a
        bcrypt (within a small budget per id). Rotating one gives its
        successor a check value at once."""
        query = (
            sa.select(ApiKey.id)
            .where(ApiKey.key_check.is_(None), ApiKey.revoked_at.is_(None))
            .order_by(ApiKey.created_at, ApiKey.id)
        )
        with self._session() as session:
            return list(session.scalars(query))

    def get_key(self, key_id: str) -> KeyRecord | None:
        """The record of ``key_id``, revoked or not, or ``None``."""
        if not isinstance(key_id, str) or not is_key_id(key_id):
            return None
        with self._session() as session:
            model = session.get(ApiKey, key_id)
            return None if model is None else KeyRecord.from_model(model)

    def list_keys(
        self, *, include_revoked: bool = False, owner: str | None = None
    ) -> list[KeyRecord]:
        """Records oldest first; revoked ones only with ``include_revoked``.

        Expired keys are listed: their :meth:`~apikey_middleware.records.KeyRecord.state`
        says so.
        """
        query = sa.select(ApiKey).order_by(ApiKey.created_at, ApiKey.id)
        if not include_revoked:
            query = query.where(ApiKey.revoked_at.is_(None))
        if owner is not None:
            query = query.where(ApiKey.owner == owner)
        with self._session() as session:
            records = [KeyRecord.from_model(model) for model in session.scalars(query)]
        # MySQL compares text regardless of case: "acme" finds "ACME"'s keys.
        return records if owner is None else [r for r in records if r.owner == owner]

    def revoke(self, key_id: str) -> KeyRecord:
        """Revoke ``key_id`` now, for every process that uses this database.

        Revoking a revoked key changes nothing.

        :raises KeyNotFoundError: no key has this id.
        """
        if not isinstance(key_id, str) or not is_key_id(key_id):
            raise KeyNotFoundError(str(key_id))
        with self._session() as session, session.begin():
            # A single UPDATE first: on SQLite it takes the write lock at
            # once, waiting out a busy reader instead of failing.
            session.execute(
                sa.update(ApiKey)
                .where(ApiKey.id == key_id, ApiKey.revoked_at.is_(None))
                .values(revoked_at=utcnow())
            )
            model = session.get(ApiKey, key_id)
            if model is None:
                raise KeyNotFoundError(key_id)
            announce(session.connection(), key_id)
            return KeyRecord.from_model(model)

    def update_key(
        self,
        key_id: str,
        *,
        name: str | Unset = UNSET,
        scopes: str | Iterable[str] | Unset = UNSET,
        expires_at: datetime | timedelta | Unset | None = UNSET,
        rate_limit: str | Unset | None = UNSET,
    ) -> KeyRecord:
        """Change what is given of a key, and nothing else; the change holds
        from the next request in every process, like a revoke.

        :param expires_at: an aware datetime or a timedelta from now, in the
            future; ``None`` removes the expiry.
        :param rate_limit: its own rate limit in the ``limits`` notation, or
            ``None`` for none (the middleware's ``default_rate_limit``
            applies).
        :raises KeyNotFoundError: no key has this id.
        :raises ValueError: a bad value, or the key is revoked.
        """
        values: dict[str, t.Any] = {}
        if not isinstance(name, Unset):
            values["name"] = check_name("name", name)
        if not isinstance(scopes, Unset):
            values["scopes"] = " ".join(normalize_scopes(scopes))
        if not isinstance(expires_at, Unset):
            values["expires_at"] = expiry("expires_at", expires_at)
        if not isinstance(rate_limit, Unset):
            values["rate_limit"] = check_rate_limit("rate_limit", rate_limit)
        if not isinstance(key_id, str) or not is_key_id(key_id):
            raise KeyNotFoundError(str(key_id))
        with self._session() as session, session.begin():
            if values:
                session.execute(
                    sa.update(ApiKey)
                    .where(ApiKey.id == key_id, ApiKey.revoked_at.is_(None))
                    .values(**values)
                )
            model = session.get(ApiKey, key_id)
            if model is None:
                raise KeyNotFoundError(key_id)
            if model.revoked_at is not None:
                raise ValueError(f"key {key_id!r} is revoked and cannot be changed")
            announce(session.connection(), key_id)
            return KeyRecord.from_model(model)

    def rotate(self, key_id: str, *, grace: timedelta = timedelta(0)) -> IssuedKey:
        """Replace ``key_id`` with a new key of the same name, type, scopes,
        owner and rate limit; the old key keeps working for ``grace``, then
        is refused.

        With ``grace=0`` the old key is revoked at once; otherwise it expires
        at ``now + grace`` (or sooner, if it was to expire before). A key
        that had a lifetime passes it on: the new key expires that long
        after its creation. The new record's ``replaces`` names the old one.

        :raises KeyNotFoundError: no key has this id.
        :raises ~apikey_middleware.errors.AlreadyRotatedError: the key was
            rotated already (a second successor is never made).
        :raises ValueError: the key is revoked, or ``grace`` is negative.
        """
        if not isinstance(grace, timedelta) or grace < timedelta(0):
            raise ValueError("grace must be a timedelta of zero or more")
        old = self.get_key(key_id) if isinstance(key_id, str) else None
        if old is None:
            raise KeyNotFoundError(str(key_id))
        if old.revoked_at is not None:
            raise ValueError(f"key {key_id!r} is revoked and cannot be rotated")
        with self.engine.connect() as connection:
            successor = successor_of(connection, old.id)
        if successor is not None:
            raise AlreadyRotatedError(old.id, successor)
        self._pepper.claim()
        lifetime = None if old.expires_at is None else old.expires_at - old.created_at
        return issue_key(
            self.engine,
            self.hasher,
            name=old.name,
            key_type=old.key_type,
            scopes=normalize_scopes(old.scopes),  # as they are stored, checked again
            owner=old.owner,
            expires_at=None if lifetime is None else utcnow() + lifetime,
            rate_limit=old.rate_limit,
            replaces=old.id,
            retire=retirement(old, grace),
        )
