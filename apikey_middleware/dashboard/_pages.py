"""The dashboard's pages: the key list, Generate New Key, Revoke, Rotate, usage.

Every page works for the signed-in account only, on its own keys: a key id
of another account, or of no account, answers 404 as an unknown one does.
Every change is a ``POST`` carrying the session's CSRF token. A new key is
in one response only, the one to the ``POST`` that made it.
"""

from __future__ import annotations

import logging
import typing as t
from datetime import timedelta

from flask import abort, flash, redirect, render_template, request, url_for
from flask.typing import ResponseReturnValue
from werkzeug.wrappers import Response

from .._time import utcnow
from ..buckets import Bucket
from ..errors import AlreadyRotatedError, KeyNotFoundError
from ..records import KeyRecord
from ._bounds import MintBounds, wait_text
from ._charts import Chart, draw
from ._forms import KeyForm, RotateForm

if t.TYPE_CHECKING:
    from .views import Dashboard

logger = logging.getLogger("apikey_middleware")

_SPARK_DAYS = 14
#: The usage page's charts: bucket -> how many of them.
_USAGE_SPANS: dict[str, int] = {"hour": 48, "day": 30}
_LATEST = 50
_MAX_QUERY = 200


def page(template: str, status: int = 200, **context: t.Any) -> Response:
    """An HTML page of the dashboard."""
    return Response(render_template(template, **context), status, mimetype="text/html")


class Pages:
    """The views, around one :class:`Dashboard`."""

    def __init__(self, dashboard: Dashboard, bounds: MintBounds) -> None:
        self.dashboard = dashboard
        self.bounds = bounds
        self.store = dashboard.store

    def index(self) -> ResponseReturnValue:
        show_revoked = request.args.get("revoked") == "1"
        query = request.args.get("q", "")[:_MAX_QUERY].strip()
        records = self.store.list_keys(owner=self.dashboard.owner(), include_revoked=show_revoked)
        if query:
            wanted = query.lower()
            records = [
                record
                for record in records
                if wanted in record.name.lower() or wanted in record.prefix.lower()
            ]
        records.reverse()  # newest first
        per_page = self.dashboard.per_page
        pages = max(1, -(-len(records) // per_page))
        asked = request.args.get("page", "1")
        # ASCII digits only: str.isdigit() takes "²", which int() refuses.
        digits = asked.isascii() and asked.isdigit() and len(asked) <= 9
        number = int(asked) if digits and 1 <= int(asked) <= pages else 1
        shown = records[(number - 1) * per_page : number * per_page]
        now = utcnow()
        return page(
            "apikey_dashboard/list.html",
            rows=[(record, record.state(now), self._spark(record)) for record in shown],
            count=len(records),
            page=number,
            pages=pages,
            query=query,
            show_revoked=show_revoked,
            spark_days=_SPARK_DAYS,
        )

    def _spark(self, record: KeyRecord) -> Chart:
        now = utcnow()
        since = now.replace(hour=0, minute=0, second=0, microsecond=0) - timedelta(
            days=_SPARK_DAYS - 1
        )
        # A key not used since the window began has nothing to count.
        used = record.last_used_at is not None and record.last_used_at >= since
        buckets = (
            self.store.usage_summary(key_id=record.id, since=since, bucket="day") if used else []
        )
        return draw(buckets, bucket="day", count=_SPARK_DAYS, width=84, height=20, until=now)

    def new(self) -> ResponseReturnValue:
        dashboard = self.dashboard
        if request.method == "GET":
            return page("apikey_dashboard/new.html", form=KeyForm(key_type=dashboard.key_types[0]))
        form = KeyForm.read(
            request.form,
            scopes=dashboard.scopes,
            key_types=dashboard.key_types,
        )
        if form.errors:
            return page("apikey_dashboard/new.html", 400, form=form)
        refusal = self._bound(grows=True)
        if refusal is not None:
            message, status, headers = refusal
            form = KeyForm(**{**vars(form), "errors": {"form": message}})
            response = page("apikey_dashboard/new.html", status, form=form)
            response.headers.update(headers)
            return response
        try:
            issued = self.store.create_key(
                form.name, owner=dashboard.owner(), **form.store_options()
            )
        except ValueError:
            # What the form could not check (a rate limit the store refuses).
            errors = {"form": "The key could not be made with these settings."}
            return page(
                "apikey_dashboard/new.html", 400, form=KeyForm(**{**vars(form), "errors": errors})
            )
        logger.info("API key dashboard: %s made key %s", dashboard.owner(), issued.id)
        return page("apikey_dashboard/created.html", 201, issued=issued, rotated=None)

    def _bound(self, *, grows: bool) -> tuple[str, int, dict[str, str]] | None:
        """Why the account may not make a key now (message, status,
        headers), or ``None``; checked before anything is hashed. A key
        made counts against the rate; one that ``grows`` the account's
        active keys counts against its most, too."""
        bounds, owner = self.bounds, self.dashboard.owner()
        # Over the rate already: refused for one read, before the database.
        wait = bounds.waiting(owner)
        if wait is None:
            if grows and bounds.at_most(self.store, owner):
                message = (
                    f"You have {bounds.max_keys} active keys, the most an account may hold:"
                    " revoke one you no longer use first. No key was made."
                )
                return message, 409, {}
            wait = bounds.spend(owner)
            if wait is None:
                return None
            # Said once per window: later tries are refused by the read above.
            logger.warning("API key dashboard: %s made keys too fast, refused", owner)
        message = f"Too many keys made in a short time: try again in {wait_text(wait)}."
        return message + " No key was made.", 429, {"Retry-After": str(wait)}

    def revoke(self, key_id: str) -> ResponseReturnValue:
        record = self.dashboard.key_of_owner(key_id)
        if request.method == "GET":
            return page("apikey_dashboard/revoke.html", record=record)
        if record.revoked_at is not None:
            flash(f"“{record.name}” ({record.prefix}) was already revoked: nothing changed.")
            return redirect(url_for(".index"), 303)
        try:
            self.store.revoke(record.id)
        except KeyNotFoundError:
            abort(404)
        logger.info("API key dashboard: %s revoked key %s", self.dashboard.owner(), record.id)
        flash(
            f"Revoked “{record.name}” ({record.prefix}). Requests with it are refused from now on."
        )
        return redirect(url_for(".index"), 303)

    def rotate(self, key_id: str) -> ResponseReturnValue:
        record = self.dashboard.key_of_owner(key_id)
        if request.method == "GET":
            return page("apikey_dashboard/rotate.html", record=record, form=RotateForm())
        form = RotateForm.read(request.form)
        if form.errors:
            return page("apikey_dashboard/rotate.html", 400, record=record, form=form)
        refusal: tuple[str, int, dict[str, str]] | None
        if record.revoked_at is not None:
            refusal = "This key is revoked: it cannot be rotated.", 409, {}
        else:
            # With a grace period the old key stays active beside the new one.
            refusal = self._bound(grows=bool(form.period))
        if refusal is None:
            try:
                issued = self.store.rotate(record.id, grace=form.period)
            except KeyNotFoundError:
                abort(404)
            except AlreadyRotatedError as error:
                successor = self.store.get_key(error.successor_id)
                shown = successor.prefix if successor is not None else error.successor_id
                message = f"This key was already rotated, to {shown}: rotate that key instead."
                refusal = message, 409, {}
            except ValueError:
                refusal = "This key is revoked: it cannot be rotated.", 409, {}
        if refusal is not None:
            message, status, headers = refusal
            form = RotateForm(form.grace, {"form": message})
            response = page("apikey_dashboard/rotate.html", status, record=record, form=form)
            response.headers.update(headers)
            return response
        logger.info(
            "API key dashboard: %s rotated key %s to %s",
            self.dashboard.owner(),
            record.id,
            issued.id,
        )
        old = self.store.get_key(record.id) or record
        return page("apikey_dashboard/created.html", 201, issued=issued, rotated=old)

    def usage(self, key_id: str) -> ResponseReturnValue:
        record = self.dashboard.key_of_owner(key_id)
        by = request.args.get("by", "hour")
        if by not in _USAGE_SPANS:
            by = "hour"
        bucket = t.cast(Bucket, by)
        count = _USAGE_SPANS[by]
        now = utcnow()
        step = timedelta(hours=1) if by == "hour" else timedelta(days=1)
        since = now - step * count
        buckets = self.store.usage_summary(key_id=record.id, since=since, bucket=bucket)
        chart = draw(buckets, bucket=bucket, count=count, width=720, height=180, until=now)
        return page(
            "apikey_dashboard/usage.html",
            record=record,
            state=record.state(now),
            chart=chart,
            by=by,
            spans=_USAGE_SPANS,
            latest=self.store.usage(record.id, limit=_LATEST),
        )
