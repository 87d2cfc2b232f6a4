"""ID-token checks as Cloud Run's front end makes them (google-auth does the cryptography)."""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Mapping
from typing import Any

from google.auth import exceptions as google_exceptions
from google.auth import jwt
from google.auth.transport import requests as google_requests

GOOGLE_ISSUERS = frozenset({"accounts.google.com", "https://accounts.google.com"})
# A token signed by a key id not in the cached certificates refetches them, at most this often.
REFETCH_INTERVAL = 1.0


class TokenRejected(Exception):
    """The request may not pass; `status` is what Cloud Run would answer."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


class SigningCertificates:
    """The `{key id: x509 PEM}` map at `certs_url`, cached as its Cache-Control allows.

    `google.oauth2.id_token.verify_token` would fetch it on every call; Google's own
    verifiers cache it, so does this.
    """

    def __init__(self, certs_url: str, max_age: float, timeout: float) -> None:
        self.url = certs_url
        self._max_age = max_age
        self._timeout = timeout
        self._request = google_requests.Request()
        self._lock = threading.Lock()
        self._certs: Mapping[str, str] | None = None
        self._fresh_until = 0.0
        self._fetched_at = -REFETCH_INTERVAL

    def get(self, key_id: str | None = None) -> Mapping[str, str]:
        """The certificates; fetched again when stale, or when `key_id` is new to them (the
        signer may have rotated its keys) and the last fetch is over a second old."""
        with self._lock:
            now = time.monotonic()
            stale = self._certs is None or now >= self._fresh_until
            unknown_key = (
                key_id is not None
                and self._certs is not None
                and key_id not in self._certs
                and now - self._fetched_at >= REFETCH_INTERVAL
            )
            if stale or unknown_key:
                self._fetch()
            assert self._certs is not None
            return self._certs

    def _fetch(self) -> None:
        # Raises google.auth TransportError when the server cannot be reached.
        response = self._request(self.url, method="GET", timeout=self._timeout)
        if response.status != 200:
            raise google_exceptions.TransportError(
                f"certificates at {self.url} answered HTTP {response.status}"
            )
        certs = json.loads(response.data.decode())
        max_age = self._max_age
        match = re.search(r"max-age=(\d+)", response.headers.get("cache-control", ""))
        if match:
            max_age = min(max_age, float(match.group(1)))
        self._certs = certs
        self._fetched_at = time.monotonic()
        self._fresh_until = self._fetched_at + max_age


def _key_id(token: str) -> str | None:
    try:
        kid = jwt.decode_header(token).get("kid")
    except (ValueError, google_exceptions.GoogleAuthError):
        return None  # not a JWT: jwt.decode below says why
    return kid if isinstance(kid, str) else None


def _redact(text: str, token: str) -> str:
    """google-auth echoes malformed tokens in its messages; keep them out of logs."""
    if token:
        text = text.replace(token, "<token>")
    return text[:200]


class IdTokenVerifier:
    """Checks Google ID tokens as Cloud Run's front end does (blocking; call in a thread)."""

    def __init__(
        self,
        certs_url: str,
        audiences: list[str],
        *,
        invokers: frozenset[str] | None,
        clock_skew: int,
        certs_cache_seconds: float,
        timeout: float,
    ) -> None:
        self.audiences = audiences
        self.invokers = invokers
        self.clock_skew = clock_skew
        self._certs = SigningCertificates(certs_url, certs_cache_seconds, timeout)

    def _claims(self, token: str) -> Mapping[str, Any]:
        """Signature, audience, expiry and issue time, checked by google-auth."""
        certs = self._certs.get(_key_id(token))
        return jwt.decode(
            token, certs=certs, audience=self.audiences, clock_skew_in_seconds=self.clock_skew
        )

    def principal(self, authorization: str | None) -> str:
        """The verified caller's email (or subject), else raise TokenRejected."""
        if not authorization:
            raise TokenRejected(403, "no Authorization header")
        scheme, _, token = authorization.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise TokenRejected(401, "Authorization header is not 'Bearer <token>'")
        try:
            claims = self._claims(token)
        except google_exceptions.TransportError as exc:
            reason = f"certificates unavailable: {_redact(str(exc), token)}"
            raise TokenRejected(503, reason) from None
        except (ValueError, google_exceptions.GoogleAuthError) as exc:
            reason = f"{type(exc).__name__}: {_redact(str(exc), token)}"
            raise TokenRejected(401, reason) from None
        if claims.get("iss") not in GOOGLE_ISSUERS:
            raise TokenRejected(401, f"issuer {claims.get('iss')!r} is not Google")
        principal = str(claims.get("email") or claims.get("sub") or "")
        if self.invokers is not None and principal not in self.invokers:
            raise TokenRejected(403, f"{principal or 'caller'} is not an allowed invoker")
        return principal
