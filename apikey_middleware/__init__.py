"""API-key authentication for any WSGI application."""

from .errors import ApiKeyError as ApiKeyError
from .errors import ForbiddenError as ForbiddenError
from .errors import InvalidKeyError as InvalidKeyError
from .errors import KeyNotFoundError as KeyNotFoundError
from .errors import MissingKeyError as MissingKeyError
from .errors import ServiceUnavailableError as ServiceUnavailableError
from .errors import TooManyRequestsError as TooManyRequestsError
from .leaks import LeakedKey as LeakedKey
from .leaks import LeakRecord as LeakRecord
from .middleware import ApiKeyMiddleware as ApiKeyMiddleware
from .principal import Principal as Principal
from .store import IssuedKey as IssuedKey
from .store import KeyRecord as KeyRecord
from .store import SQLAlchemyKeyStore as SQLAlchemyKeyStore
from .throttle import FailureThrottle as FailureThrottle

__all__ = [
    "ApiKeyError",
    "ApiKeyMiddleware",
    "FailureThrottle",
    "ForbiddenError",
    "InvalidKeyError",
    "IssuedKey",
    "KeyNotFoundError",
    "KeyRecord",
    "LeakRecord",
    "LeakedKey",
    "MissingKeyError",
    "Principal",
    "SQLAlchemyKeyStore",
    "ServiceUnavailableError",
    "TooManyRequestsError",
]
