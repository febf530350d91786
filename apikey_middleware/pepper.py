"""The pepper a database's keys are hashed with, so that another is refused.

A key hashed with one pepper never verifies with another: a store (an app,
the ``apikey`` command) that gets a different ``APIKEY_PEPPER`` than the
keys were made with answers 401 to every one of them, and makes keys the
others refuse. To make that impossible to miss, the database keeps a keyed
fingerprint of the pepper (:func:`~apikey_middleware.hashing.pepper_fingerprint`)
in ``apikey_meta``:

- it is written with the first key made in the database, or, in a database
  whose keys were made before fingerprints, at the first key that proves
  the pepper by verifying;
- a store with another pepper (or none, where there is one) refuses to
  start (``create_schema``, the Flask extension's ``init_app``) and to make
  keys, with a :exc:`ValueError` naming ``APIKEY_PEPPER``;
- once no key of the old pepper is usable (all revoked or expired), a key
  made with a new pepper records the new one: that is how a pepper is
  changed;
- a running store whose keys start failing their check looks again (at most
  once a minute) and logs an error naming ``APIKEY_PEPPER`` when the
  database now records another pepper: a key made by a process with
  another pepper after this one started cannot fail silently.
"""

from __future__ import annotations

import hmac
import logging
import threading
import time
import typing as t

import sqlalchemy as sa
from sqlalchemy import exc

from ._time import utcnow
from .hashing import KeyHasher, pepper_fingerprint
from .schema import keys_table, meta_table

if t.TYPE_CHECKING:
    from sqlalchemy.engine import Connection, Engine

logger = logging.getLogger("apikey_middleware")

#: The ``apikey_meta`` row that holds the fingerprint.
FINGERPRINT_ROW = "pepper_fingerprint"

_READ = sa.select(meta_table.c.value).where(meta_table.c.name == FINGERPRINT_ROW)

#: Seconds between two looks at the recorded pepper after failed checks.
RECHECK_INTERVAL = 60.0


class PepperCheck:
    """Compares a store's pepper with the one its database records.

    :param engine: the store's engine.
    :param hasher: the store's hasher, whose pepper is checked.
    """

    def __init__(self, engine: Engine, hasher: KeyHasher) -> None:
        self.engine = engine
        self.fingerprint = hasher.pepper_fingerprint()
        self._peppered = hasher.peppered
        # Set once the database is known to record this store's pepper.
        self.confirmed = False
        self._proof_tried = False
        self._lock = threading.Lock()
        self._recheck = threading.Lock()
        self._rechecked_at: float | None = None

    def __repr__(self) -> str:
        return f"PepperCheck(confirmed={self.confirmed})"

    def mismatch(self, recorded: str) -> str:
        """What to say when the database records ``recorded``."""
        if not self._peppered:
            here = "APIKEY_PEPPER (or pepper=) is not set here, but"
            there = "were hashed with a pepper"
        elif hmac.compare_digest(recorded, pepper_fingerprint(b"")):
            here = "APIKEY_PEPPER (or pepper=) is set here, but"
            there = "were hashed without a pepper"
        else:
            here = "APIKEY_PEPPER (or pepper=) differs from the pepper"
            there = "were hashed with"
        return (
            f"{here} the keys in this database {there}: every app and command"
            " that uses this database (the app's config, the environment of"
            " `apikey`) needs the same APIKEY_PEPPER"
        )

    def _recorded(self, connection: Connection) -> str | None:
        if not sa.inspect(connection).has_table(meta_table.name):
            return None  # made by an earlier release: init-db adds the table
        return connection.scalar(_READ)

    def check(self, connection: Connection) -> None:
        """Refuse a database that records another pepper.

        :raises ValueError: it does; the message names ``APIKEY_PEPPER``.
        """
        if self.confirmed:
            return
        recorded = self._recorded(connection)
        if recorded is None:
            return
        if not hmac.compare_digest(recorded, self.fingerprint):
            raise ValueError(self.mismatch(recorded))
        self.confirmed = True

    def claim(self) -> None:
        """Before a key is made: refuse another pepper while a key of it is
        usable, and record this one where nothing proves another.

        :raises ValueError: the database's usable keys have another pepper.
        """
        if self.confirmed:
            return
        with self._lock:
            for attempt in (1, 2):
                try:
                    with self.engine.begin() as connection:
                        self._claim(connection)
                    return
                except exc.IntegrityError:
                    # Another process recorded its pepper meanwhile: compare.
                    if attempt == 2:
                        raise

    def _claim(self, connection: Connection) -> None:
        if not sa.inspect(connection).has_table(meta_table.name):
            return
        recorded = connection.scalar(_READ)
        if recorded is not None and hmac.compare_digest(recorded, self.fingerprint):
            self.confirmed = True
            return
        now = utcnow()
        usable = connection.scalar(
            sa.select(keys_table.c.id)
            .where(
                keys_table.c.revoked_at.is_(None),
                sa.or_(keys_table.c.expires_at.is_(None), keys_table.c.expires_at > now),
            )
            .limit(1)
        )
        if recorded is None:
            if usable is not None:
                return  # keys made before fingerprints: the first to verify records it
            connection.execute(
                sa.insert(meta_table).values(name=FINGERPRINT_ROW, value=self.fingerprint)
            )
        elif usable is not None:
            raise ValueError(self.mismatch(recorded))
        else:
            logger.warning(
                "no usable key of this database has the pepper it recorded: recording"
                " the new APIKEY_PEPPER"
            )
            connection.execute(
                sa.update(meta_table)
                .where(meta_table.c.name == FINGERPRINT_ROW)
                .values(value=self.fingerprint)
            )
        self.confirmed = True

    def proven(self) -> None:
        """A key just verified with this store's pepper: record it where the
        database records none (keys made before fingerprints). Tried once
        per process; a failure only leaves it to the next."""
        if self.confirmed or self._proof_tried:
            return
        self._proof_tried = True
        try:
            with self.engine.begin() as connection:
                if not sa.inspect(connection).has_table(meta_table.name):
                    return
                recorded = connection.scalar(_READ)
                if recorded is None:
                    connection.execute(
                        sa.insert(meta_table).values(name=FINGERPRINT_ROW, value=self.fingerprint)
                    )
                elif not hmac.compare_digest(recorded, self.fingerprint):
                    logger.warning(
                        "a key verified with this APIKEY_PEPPER, but the database records"
                        " another: its keys were made with two peppers"
                    )
                    return
            self.confirmed = True
        except exc.SQLAlchemyError as error:
            logger.info("could not record the pepper's fingerprint: %s", type(error).__name__)

    def suspect(self) -> None:
        """A key of this database failed its check here: if the database
        now records another pepper, say so in the log.

        A flood of wrong secrets costs at most one read a minute per
        process, and never waits: a look already under way is enough.
        """
        now = time.monotonic()
        if self._rechecked_at is not None and now - self._rechecked_at < RECHECK_INTERVAL:
            return
        if not self._recheck.acquire(blocking=False):
            return
        try:
            self._rechecked_at = now
            with self.engine.connect() as connection:
                recorded = self._recorded(connection)
            if recorded is not None and not hmac.compare_digest(recorded, self.fingerprint):
                self.confirmed = False
                logger.error("keys of this database fail here: %s", self.mismatch(recorded))
        except exc.SQLAlchemyError as error:
            logger.info("could not read the pepper's fingerprint: %s", type(error).__name__)
        finally:
            self._recheck.release()
