"""Google ID-token authentication for the UI's calls to the model backend.

A private Cloud Run service only accepts requests carrying `Authorization: Bearer <ID token>`
whose audience is the service URL. `GoogleIdTokenAuth` is an `httpx.Auth` that gets those
tokens from google-auth (`google.oauth2.id_token.fetch_id_token_credentials`), which finds,
in this order:

1. `GOOGLE_APPLICATION_CREDENTIALS` naming a service-account key file (or an
   `impersonated_service_account` file);
2. a metadata server (on Cloud Run: the service's own account). google-auth pings
   `GCE_METADATA_IP` (default 169.254.169.254) and reads tokens from `GCE_METADATA_HOST`
   (default metadata.google.internal). It reads GCE_METADATA_HOST once, when
   `google.auth.compute_engine` is first imported, so set it before the process starts.

Tokens are cached until shortly before they expire; one refresh serves all concurrent
requests. A 401/403 answer triggers one refresh and one retry; a second denial goes back to
the caller (the backend client maps it to `BackendAuthError` with `denied_message`).
Tokens never appear in logs, reprs or error messages.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import weakref
from collections.abc import AsyncGenerator, Generator
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import httpx
from google.auth import exceptions as google_exceptions
from google.auth import jwt
from google.auth.transport import requests as google_requests
from google.oauth2 import id_token

from ui.errors import BackendAuthError

if TYPE_CHECKING:
    from ui.settings import Settings

log = logging.getLogger(__name__)

DENIED_STATUSES = frozenset({401, 403})
# Google ID tokens live one hour; fetch a new one this long before the old one expires.
DEFAULT_REFRESH_MARGIN = 300.0
# Upper bound for each HTTP call google-auth makes (metadata server, token endpoint).
DEFAULT_FETCH_TIMEOUT = 5.0
_DEFAULT_PORTS = {"http": 80, "https": 443}


def root_url(url: str) -> str:
    """`scheme://host[:port]` of a URL: the audience Cloud Run expects (no path)."""
    parts = urlsplit(url.strip())
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS or not parts.hostname:
        raise ValueError(f"expected an http(s) URL with a host, got {url!r}")
    host = parts.hostname.lower()
    if ":" in host:  # IPv6 literal
        host = f"[{host}]"
    port = parts.port
    if port is not None and port != _DEFAULT_PORTS[scheme]:
        host = f"{host}:{port}"
    return f"{scheme}://{host}"


def denied_message(status_code: int, audience: str) -> str:
    """What a 401/403 from the backend most likely means, and what to change."""
    if status_code == 401:
        return (
            f"The model backend ({audience}) did not accept the UI's Google ID token "
            "(HTTP 401). Most likely the token's audience does not match the backend "
            "service URL: set LLM_AUTH_AUDIENCE to the service URL (https://SERVICE-...run.app) "
            "or leave it unset to use the backend URL without its path."
        )
    if status_code == 403:
        return (
            f"The model backend ({audience}) refused the UI (HTTP 403). Most likely the UI's "
            "service account lacks roles/run.invoker on the backend service: gcloud run "
            "services add-iam-policy-binding BACKEND --member=serviceAccount:UI_ACCOUNT "
            "--role=roles/run.invoker. (Cloud Run also answers 403 when no ID token was sent: "
            "check LLM_AUTH.)"
        )
    return f"The model backend ({audience}) refused the UI's credentials (HTTP {status_code})."


def _no_token_message(audience: str, reason: str) -> str:
    return (
        f"Could not get a Google ID token for the model backend ({audience}): {reason} "
        "On Cloud Run the metadata server provides it for the service's account. Elsewhere set "
        "GOOGLE_APPLICATION_CREDENTIALS to a service-account key file, or GCE_METADATA_HOST "
        "and GCE_METADATA_IP to a metadata server (for local runs: python -m "
        "devtools.fake_metadata), or LLM_AUTH=none if the backend needs no authentication."
    )


def _describe(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    text = text if len(text) <= 300 else text[:297] + "..."
    return f"{type(exc).__name__}: {text}." if text else f"{type(exc).__name__}."


class _Token:
    """A cached ID token. Its repr never shows the token."""

    __slots__ = ("expires_at", "refresh_at", "value")

    def __init__(self, value: str, expires_at: float, margin: float) -> None:
        self.value = value
        self.expires_at = expires_at
        lifetime = max(0.0, expires_at - time.time())
        # A margin longer than the token's life would refetch on every request.
        self.refresh_at = expires_at - min(margin, lifetime / 2)

    def usable(self, rejected: str | None) -> bool:
        return self.value != rejected and time.time() < self.refresh_at

    def __repr__(self) -> str:
        return f"<ID token expiring at {self.expires_at:.0f}>"


class GoogleIdTokenAuth(httpx.Auth):
    """httpx auth adding `Authorization: Bearer <Google ID token for audience>`.

    Works with `httpx.Client` and `httpx.AsyncClient`. Raises `BackendAuthError` from the
    request call when no token can be obtained at all.
    """

    def __init__(
        self,
        audience: str,
        *,
        refresh_margin: float = DEFAULT_REFRESH_MARGIN,
        fetch_timeout: float = DEFAULT_FETCH_TIMEOUT,
    ) -> None:
        if not isinstance(audience, str) or not audience.startswith(("http://", "https://")):
            raise ValueError(
                f"ID token audience must be the backend service URL (http(s)://...), "
                f"got {audience!r}"
            )
        if refresh_margin < 0:
            raise ValueError(f"refresh_margin must be >= 0 seconds, got {refresh_margin}")
        if fetch_timeout <= 0:
            raise ValueError(f"fetch_timeout must be > 0 seconds, got {fetch_timeout}")
        self._audience = audience
        self._margin = float(refresh_margin)
        self._fetch_timeout = float(fetch_timeout)
        self._lock = threading.Lock()
        self._token: _Token | None = None
        self._credentials: Any = None
        self._request: Any = None
        self._fetches = 0
        self._loop_locks: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Lock] = (
            weakref.WeakKeyDictionary()
        )
        self._loop_locks_guard = threading.Lock()

    @property
    def audience(self) -> str:
        return self._audience

    @property
    def fetch_count(self) -> int:
        """How many tokens this object has fetched (diagnostics and tests)."""
        return self._fetches

    def __repr__(self) -> str:
        return f"GoogleIdTokenAuth(audience={self._audience!r}, cached={self._token!r})"

    # --- getting tokens ----------------------------------------------------------------
    def get_token(self, rejected: str | None = None) -> str:
        """A valid token; a fresh one if the cached one is expiring or equals `rejected`.

        Concurrent callers wait for one fetch instead of each fetching.
        """
        token = self._token
        if token is not None and token.usable(rejected):
            return token.value
        with self._lock:
            token = self._token
            if token is not None and token.usable(rejected):
                return token.value
            self._token = self._fetch()
            return self._token.value

    async def aget_token(self, rejected: str | None = None) -> str:
        """`get_token` for event loops: one task fetches in a worker thread, others wait."""
        token = self._token
        if token is not None and token.usable(rejected):
            return token.value
        async with self._loop_lock():
            token = self._token
            if token is not None and token.usable(rejected):
                return token.value
            # google-auth is blocking (requests); keep it off the event loop.
            return await asyncio.to_thread(self.get_token, rejected)

    def _loop_lock(self) -> asyncio.Lock:
        loop = asyncio.get_running_loop()
        with self._loop_locks_guard:
            lock = self._loop_locks.get(loop)
            if lock is None:
                lock = self._loop_locks[loop] = asyncio.Lock()
            return lock

    def _fetch(self) -> _Token:
        started = time.monotonic()
        try:
            if self._request is None:
                self._request = _BoundedRequest(self._fetch_timeout)
            if self._credentials is None:
                # google-auth imports its compute_engine module (which reads
                # GCE_METADATA_HOST) only here, at the first fetch.
                self._credentials = id_token.fetch_id_token_credentials(
                    self._audience, request=self._request
                )
            self._credentials.refresh(self._request)
            value = self._credentials.token
            if not value:
                raise google_exceptions.RefreshError("the credentials returned no ID token")
            if isinstance(value, bytes):
                value = value.decode()
            claims = jwt.decode(value, verify=False)
            expires_at = float(claims["exp"])
        except (google_exceptions.GoogleAuthError, ValueError, KeyError, OSError) as exc:
            self._credentials = None  # rediscover next time (e.g. the key file was fixed)
            # The fix (credentials, metadata server, LLM_AUTH) is for operators: the log.
            log.warning("%s", _no_token_message(self._audience, _describe(exc)))
            raise BackendAuthError(
                "This app could not get the credentials the model backend needs. This is "
                "a setup problem on the server: the details are in its log.",
                status_code=None,
            ) from exc
        self._fetches += 1
        log.info(
            "got a Google ID token for %s from %s in %.2fs (valid for %.0fs)",
            self._audience,
            type(self._credentials).__name__,
            time.monotonic() - started,
            expires_at - time.time(),
        )
        return _Token(value, expires_at, self._margin)

    # --- httpx.Auth --------------------------------------------------------------------
    def sync_auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response]:
        token = self.get_token()
        request.headers["Authorization"] = f"Bearer {token}"
        response = yield request
        if response.status_code in DENIED_STATUSES:
            self._log_denied(request, response)
            request.headers["Authorization"] = f"Bearer {self.get_token(rejected=token)}"
            yield request

    async def async_auth_flow(
        self, request: httpx.Request
    ) -> AsyncGenerator[httpx.Request, httpx.Response]:
        token = await self.aget_token()
        request.headers["Authorization"] = f"Bearer {token}"
        response = yield request
        if response.status_code in DENIED_STATUSES:
            self._log_denied(request, response)
            new_token = await self.aget_token(rejected=token)
            request.headers["Authorization"] = f"Bearer {new_token}"
            yield request

    def _log_denied(self, request: httpx.Request, response: httpx.Response) -> None:
        log.warning(
            "backend answered %d to %s %s; retrying once with a new ID token",
            response.status_code,
            request.method,
            request.url.path,
        )


class _BoundedRequest(google_requests.Request):
    """google-auth's requests transport, with every call's timeout capped."""

    def __init__(self, max_timeout: float) -> None:
        super().__init__()
        self.max_timeout = max_timeout

    def __call__(  # type: ignore[override]
        self,
        url: str,
        method: str = "GET",
        body: Any = None,
        headers: Any = None,
        timeout: float | None = None,
        **kwargs: Any,
    ) -> Any:
        bounded = self.max_timeout if timeout is None else min(timeout, self.max_timeout)
        return super().__call__(
            url, method=method, body=body, headers=headers, timeout=bounded, **kwargs
        )


_shared: dict[tuple[str, float], GoogleIdTokenAuth] = {}
_shared_lock = threading.Lock()


def auth_for(settings: Settings, backend_url: str) -> httpx.Auth | None:
    """The auth for calls to `backend_url` according to `settings.auth`.

    "google" -> ID tokens; "none" -> no auth; "auto" -> google for https URLs, none
    otherwise. The audience is `settings.auth_audience`, else the URL's scheme://host[:port].
    One auth object (one token cache) is shared per audience.
    """
    mode = settings.auth
    if mode == "none":
        return None
    if mode not in ("auto", "google"):
        raise ValueError(f"LLM_AUTH must be auto, none or google, got {mode!r}")
    scheme = urlsplit(backend_url).scheme.lower()
    if mode == "auto" and scheme != "https":
        return None
    audience = settings.auth_audience or root_url(backend_url)
    margin = float(getattr(settings, "auth_refresh_margin", DEFAULT_REFRESH_MARGIN))
    with _shared_lock:
        auth = _shared.get((audience, margin))
        if auth is None:
            auth = _shared[(audience, margin)] = GoogleIdTokenAuth(audience, refresh_margin=margin)
        return auth
