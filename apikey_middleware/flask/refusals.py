"""Refusals of :func:`~apikey_middleware.flask.require_scopes` as Werkzeug
HTTP exceptions, so a Flask app's own error handlers see them."""

from __future__ import annotations

from werkzeug import exceptions

from ..errors import ApiKeyError

__all__ = ["KeyRefused"]


class KeyRefused(exceptions.HTTPException):
    """A refusal of :func:`~apikey_middleware.flask.require_scopes`, as an HTTP exception.

    Flask hands it to the app's error handler for its status
    (``@app.errorhandler(401)``) or for ``KeyRefused``; without one, the
    answer is its ``response``: the package's JSON error, byte for byte
    what :class:`~apikey_middleware.middleware.ApiKeyMiddleware` sends.
    Each status has its own subclass, which is also Werkzeug's exception
    for that status (:class:`~werkzeug.exceptions.Unauthorized`, ...).
    """

    def __init__(self, error: ApiKeyError) -> None:
        super().__init__(error.message, error.get_response())
        #: The :class:`~apikey_middleware.errors.ApiKeyError`: its
        #: ``code``, ``status`` and ``message``.
        self.error = error

    @staticmethod
    def of(error: ApiKeyError) -> KeyRefused:
        """The exception to raise for ``error``."""
        return _REFUSED_BY_STATUS.get(error.status, KeyRefused)(error)


class _BadRequest(KeyRefused, exceptions.BadRequest):
    pass


class _Unauthorized(KeyRefused, exceptions.Unauthorized):
    pass


class _Forbidden(KeyRefused, exceptions.Forbidden):
    pass


class _TooManyRequests(KeyRefused, exceptions.TooManyRequests):
    pass


class _ServiceUnavailable(KeyRefused, exceptions.ServiceUnavailable):
    pass


_REFUSED_BY_STATUS: dict[int, type[KeyRefused]] = {
    400: _BadRequest,
    401: _Unauthorized,
    403: _Forbidden,
    429: _TooManyRequests,
    503: _ServiceUnavailable,
}
