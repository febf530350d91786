"""API-key authentication for any WSGI application."""

from .backend import KeyBackend as KeyBackend
from .buckets import UsageBucket as UsageBucket
from .counters import CounterStorage as CounterStorage
from .errors import AlreadyRotatedError as AlreadyRotatedError
from .errors import ApiKeyError as ApiKeyError
from .errors import BadRequestError as BadRequestError
from .errors import ForbiddenError as ForbiddenError
from .errors import InvalidKeyError as InvalidKeyError
from .errors import KeyNotFoundError as KeyNotFoundError
from .errors import MissingKeyError as MissingKeyError
from .errors import RateLimitedError as RateLimitedError
from .errors import RejectedKeyError as RejectedKeyError
from .errors import ServiceUnavailableError as ServiceUnavailableError
from .errors import StoreError as StoreError
from .errors import StoreUnavailableError as StoreUnavailableError
from .errors import TooManyRequestsError as TooManyRequestsError
from .leaks import LeakedKey as LeakedKey
from .leaks import LeakRecord as LeakRecord
from .middleware import ApiKeyMiddleware as ApiKeyMiddleware
from .principal import Principal as Principal
from .ratelimit import RateLimiter as RateLimiter
from .records import IssuedKey as IssuedKey
from .records import KeyRecord as KeyRecord
from .rules import RuleTable as RuleTable
from .schema import UTCDateTime as UTCDateTime
from .schema import metadata as metadata
from .store import SQLAlchemyKeyStore as SQLAlchemyKeyStore
from .throttle import FailureThrottle as FailureThrottle
from .usage import UsageWriter as UsageWriter
from .usage_records import UsageRecord as UsageRecord

__all__ = [
    "AlreadyRotatedError",
    "ApiKeyError",
    "ApiKeyMiddleware",
    "BadRequestError",
    "CounterStorage",
    "FailureThrottle",
    "ForbiddenError",
    "InvalidKeyError",
    "IssuedKey",
    "KeyBackend",
    "KeyNotFoundError",
    "KeyRecord",
    "LeakRecord",
    "LeakedKey",
    "MissingKeyError",
    "Principal",
    "RateLimitedError",
    "RateLimiter",
    "RejectedKeyError",
    "RuleTable",
    "SQLAlchemyKeyStore",
    "ServiceUnavailableError",
    "StoreError",
    "StoreUnavailableError",
    "TooManyRequestsError",
    "UTCDateTime",
    "UsageBucket",
    "UsageRecord",
    "UsageWriter",
    "metadata",
]
