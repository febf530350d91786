"""The dashboard's forms: what a browser sent, checked before the store is asked.

Each form is read into a frozen value with the errors found, one message
per field, so that a page can show the form again with what was typed and
each message beside its field. Nothing here touches the store.
"""

from __future__ import annotations

import typing as t
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta

from werkzeug.datastructures import MultiDict

from .. import ratelimit
from .._time import utcnow
from ..keys import KEY_TYPES, holds_key
from ..records import check_name

#: What the Rotate form offers: label -> how long the old key keeps working.
GRACE_PERIODS: dict[str, timedelta] = {
    "Stop the old key now": timedelta(0),
    "1 hour": timedelta(hours=1),
    "24 hours": timedelta(hours=24),
    "7 days": timedelta(days=7),
}

_MAX_FIELD_LENGTH = 1000


def check_rate_limit(value: str) -> str:
    """``value`` in the ``limits`` notation (``"100/minute"``,
    ``"10/second;1000/hour"``), stripped, as the store checks it.

    :raises ValueError: it is not (the value is not repeated).
    """
    try:
        return str(ratelimit.check_rate_limit("rate limit", value))
    except ValueError:
        raise ValueError("Write a rate limit such as 100/minute, or 10/second;1000/hour.") from None


def _text(form: MultiDict[str, str], name: str) -> str:
    return form.get(name, "")[:_MAX_FIELD_LENGTH]


@dataclass(frozen=True)
class KeyForm:
    """The **Generate New Key** form as sent, and what is wrong with it.

    ``expires_on`` is a date (UTC): the key stops working when it begins.
    """

    name: str = ""
    key_type: str = "test"
    scopes: tuple[str, ...] = ()
    expires_on: str = ""
    rate_limit: str = ""
    errors: dict[str, str] = field(default_factory=dict)

    @classmethod
    def read(
        cls,
        form: MultiDict[str, str],
        *,
        scopes: Mapping[str, str],
        key_types: Sequence[str] = KEY_TYPES,
        now: datetime | None = None,
    ) -> KeyForm:
        """Read and check a posted form; ``scopes`` are those on offer."""
        errors: dict[str, str] = {}
        name = _text(form, "name").strip()
        try:
            check_name("name", name)
        except ValueError:
            errors["name"] = (
                "Give the key a name."
                if not name
                else "Use a shorter name, without control characters or API keys."
            )
        key_type = _text(form, "key_type")
        if key_type not in key_types:
            errors["key_type"] = "Choose Test or Live."
        chosen = tuple(dict.fromkeys(form.getlist("scopes")))
        if not chosen:
            errors["scopes"] = "Choose at least one permission."
        elif not all(scope in scopes for scope in chosen):
            errors["scopes"] = "Choose permissions from the list."
            chosen = tuple(scope for scope in chosen if scope in scopes)
        expires_on = _text(form, "expires_on").strip()
        if expires_on:
            try:
                expiry = cls._expiry(expires_on)
            except ValueError:
                errors["expires_on"] = "Give the expiry as a date, such as 2030-12-31."
                expires_on = ""
            else:
                if expiry <= (now or utcnow()):
                    errors["expires_on"] = "Choose an expiry date in the future."
        rate_limit = _text(form, "rate_limit").strip()
        if rate_limit:
            try:
                check_rate_limit(rate_limit)
            except ValueError as error:
                errors["rate_limit"] = str(error)
        # The form is shown again with what was typed, but never with a key
        # pasted into the wrong field.
        name, rate_limit = ("" if holds_key(text) else text for text in (name, rate_limit))
        return cls(name, key_type, chosen, expires_on, rate_limit, errors)

    @staticmethod
    def _expiry(text: str) -> datetime:
        day = date.fromisoformat(text)
        return datetime(day.year, day.month, day.day, tzinfo=UTC)

    @property
    def expires_at(self) -> datetime | None:
        """When the key stops working, or ``None`` (never)."""
        return self._expiry(self.expires_on) if self.expires_on else None

    def store_options(self) -> dict[str, t.Any]:
        """The keyword arguments of ``store.create_key`` (the form is valid)."""
        options: dict[str, t.Any] = {
            "key_type": self.key_type,
            "scopes": self.scopes,
            "expires_at": self.expires_at,
        }
        if self.rate_limit:
            options["rate_limit"] = self.rate_limit
        return options


@dataclass(frozen=True)
class RotateForm:
    """The **Rotate** form: how long the old key keeps working."""

    grace: str = "24 hours"
    errors: dict[str, str] = field(default_factory=dict)

    @classmethod
    def read(cls, form: MultiDict[str, str]) -> RotateForm:
        grace = _text(form, "grace")
        if grace not in GRACE_PERIODS:
            return cls(errors={"grace": "Choose how long the old key keeps working."})
        return cls(grace)

    @property
    def period(self) -> timedelta:
        return GRACE_PERIODS[self.grace]
