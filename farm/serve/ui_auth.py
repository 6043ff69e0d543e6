"""The web UI's sessions and CSRF tokens: pure functions of the API token, no I/O, no state.

A browser logs in with FARM_API_TOKEN once; the cookie it gets holds no token but a signed
session (`ISSUED.NONCE.SIGNATURE`, HMAC-SHA256 under a key derived from the token), so changing
the token ends every session, and a stolen cookie expires after SESSION_TTL_S. Each form carries
a CSRF token derived from the session's nonce (which the HttpOnly cookie hides from other sites'
scripts); htmx sends the same token as the X-CSRF-Token header. The login form, before any
session exists, uses a double-submit pair: a random cookie and its signature in the form.
Without FARM_API_TOKEN (a loopback-only farm) the UI is open like the API, and the CSRF checks
still apply.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from urllib.parse import urlsplit

SESSION_COOKIE = "farm_session"
LOGIN_COOKIE = "farm_login"
CSRF_HEADER = "x-csrf-token"
SESSION_TTL_S = 12 * 3600
CLOCK_SKEW_S = 60  # a session issued a little "in the future" (another replica's clock) still counts


class UiAuth:
    """Signs and checks sessions and CSRF tokens under a key derived from the API token."""

    def __init__(self, token: str | None, ttl_s: float = SESSION_TTL_S):
        self.token = token or None
        self.ttl_s = ttl_s
        self._key = hmac.new((token or "").encode(), b"farm-ui-session-v1", hashlib.sha256).digest()

    @property
    def open(self) -> bool:
        """No token is configured: anyone who reaches the port may use the farm (as the API)."""
        return self.token is None

    def token_ok(self, given: str | None) -> bool:
        if self.token is None:
            return True
        return bool(given) and hmac.compare_digest(given.strip().encode(), self.token.encode())

    def bearer_ok(self, authorization: str | None) -> bool:
        """An `Authorization: Bearer TOKEN` header with the right token (API clients, curl)."""
        scheme, _, given = (authorization or "").partition(" ")
        return self.token is not None and scheme.lower() == "bearer" and self.token_ok(given)

    def _sign(self, purpose: str, value: str) -> str:
        return hmac.new(self._key, f"{purpose}|{value}".encode(), hashlib.sha256).hexdigest()

    def new_session(self, now: float | None = None) -> str:
        value = f"{int(now if now is not None else time.time())}.{secrets.token_urlsafe(18)}"
        return f"{value}.{self._sign('session', value)}"

    def session_nonce(self, cookie: str | None, now: float | None = None) -> str | None:
        """The nonce of a valid, unexpired session cookie; None for anything else."""
        if not cookie or len(cookie) > 200:
            return None
        issued, _, rest = cookie.partition(".")
        nonce, _, signature = rest.partition(".")
        if not (issued.isdigit() and nonce and signature):
            return None
        if not hmac.compare_digest(signature, self._sign("session", f"{issued}.{nonce}")):
            return None
        age = (now if now is not None else time.time()) - int(issued)
        return nonce if -CLOCK_SKEW_S <= age <= self.ttl_s else None

    def csrf_token(self, nonce: str) -> str:
        return self._sign("csrf", nonce)

    def csrf_ok(self, nonce: str, given: str | None) -> bool:
        return bool(given) and hmac.compare_digest(given, self.csrf_token(nonce))

    def login_pair(self) -> tuple[str, str]:
        """(cookie value, form value) for the login form's double-submit check."""
        value = secrets.token_urlsafe(18)
        return value, self._sign("login", value)

    def login_ok(self, cookie: str | None, given: str | None) -> bool:
        return bool(cookie and given) and len(cookie) <= 100 and hmac.compare_digest(given, self._sign("login", cookie))


def same_origin(headers, host: str | None) -> bool:
    """A state-changing request came from this site: a browser's Sec-Fetch-Site, where sent,
    says so, and an Origin header, where sent, names this host. (Non-browser clients send
    neither; they need the token or a session and a CSRF token anyway.)"""
    site = headers.get("sec-fetch-site")
    if site is not None and site not in ("same-origin", "none"):
        return False
    origin = headers.get("origin")
    if origin is None:
        return True
    if origin == "null" or not host:
        return False
    return urlsplit(origin).netloc.lower() == host.lower()


def safe_next(target: str | None, default: str = "/") -> str:
    """Where to go after login: a path on this site only (no `//host`, no scheme, no backslash)."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target or len(target) > 2000:
        return default
    if any(ord(c) < 32 for c in target):
        return default
    return target
