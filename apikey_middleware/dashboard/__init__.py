"""The seed's Settings > API Keys page, as a Flask blueprint (``pip install
'apikey_middleware[dashboard]'``).

:func:`~apikey_middleware.dashboard.views.create_dashboard` makes the
blueprint; the host app says who is signed in and which permissions exist.
:mod:`~apikey_middleware.dashboard.security` holds the CSRF token and the
headers, for the host's own forms too.
"""

from .security import csrf_token as csrf_token
from .security import csrf_token_valid as csrf_token_valid
from .security import secure_headers as secure_headers
from .views import Dashboard as Dashboard
from .views import create_dashboard as create_dashboard

__all__ = ["Dashboard", "create_dashboard", "csrf_token", "csrf_token_valid", "secure_headers"]
