"""Times: always timezone-aware UTC; a timedelta given for a time counts from now."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta


def utcnow() -> datetime:
    """The current time, timezone-aware UTC."""
    return datetime.now(UTC)


def check_aware(what: str, value: datetime | None) -> datetime | None:
    """``value`` in UTC, or ``None``; a naive datetime is a ``ValueError``."""
    if value is None:
        return None
    if not isinstance(value, datetime) or value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{what} must be a timezone-aware datetime or a timedelta")
    try:
        return value.astimezone(UTC)
    except OverflowError:
        raise ValueError(f"{what} is out of the range of dates") from None


def moment(
    what: str, value: datetime | timedelta | None, *, ahead: bool = False
) -> datetime | None:
    """A time given as an aware datetime or as a timedelta from now: that
    far ahead with ``ahead`` (an expiry), that far back otherwise (``since``,
    ``before``); in UTC, or ``None``.

    :raises ValueError: a naive datetime, a negative timedelta, or a time
        out of the range of dates.
    """
    if isinstance(value, timedelta):
        if value < timedelta(0):
            raise ValueError(f"{what} must not be a negative timedelta")
        try:
            return utcnow() + value if ahead else utcnow() - value
        except OverflowError:
            raise ValueError(f"{what} is out of the range of dates") from None
    return check_aware(what, value)


def expiry(what: str, value: datetime | timedelta | None) -> datetime | None:
    """An expiry (see :func:`moment`), which must be in the future.

    :raises ValueError: it is not in the future, or not a time.
    """
    when = moment(what, value, ahead=True)
    if when is not None and when <= utcnow():
        raise ValueError(f"{what} must be in the future")
    return when
