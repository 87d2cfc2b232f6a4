"""A local Cloud Run emulator: an authenticating, scale-to-zero reverse proxy (test/dev tool).

It sits in front of the local engine (`python -m backend`) and behaves like Cloud Run where
the UI can tell the difference:

- IAM: every request needs `Authorization: Bearer <Google ID token>`, verified with
  google-auth (signature against `certs_url`, audience, expiry, issuer). Like Cloud Run it
  answers 403 when no token is sent, 401 with `WWW-Authenticate: Bearer error="invalid_token"`
  when the token does not verify, and 403 when a valid token's account is not an invoker.
  The token is not forwarded to the engine.
- Scale to zero: after `idle_timeout` seconds without requests the engine process is stopped.
  The next request starts it again after `start_delay` seconds of emulated instance start
  and is held (not failed) until the engine answers; models then load lazily as in Ollama.
- Capacity: at most `max_instances * concurrency` requests in flight (one engine process
  stands for all instances); beyond that a request waits up to `queue_timeout` seconds, then
  gets 429 "Rate exceeded." with Retry-After.
- Request timeout: 504 "upstream request timeout" if the answer has not started within
  `request_timeout` seconds of arrival; a stream still running then is cut.
- Streams pass through chunk by chunk; a client disconnect closes the upstream request.
- `GET /_emulator/state` (no auth, does not wake the engine): state, in-flight, starts, ...

    python -m backend.cloudrun --port 8080 --start-delay 5 --idle-timeout 60 --metadata
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import collections
import html
import json
import logging
import math
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from google.auth import exceptions as google_exceptions
from google.auth.transport import requests as google_requests
from google.oauth2 import id_token

log = logging.getLogger("backend.cloudrun")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

STATE_PATH = "/_emulator/state"
GOOGLE_ISSUERS = frozenset({"accounts.google.com", "https://accounts.google.com"})
MAX_REQUEST_BYTES = 32 * 1024 * 1024  # Cloud Run's HTTP/1 request size limit
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "trailers",
        "transfer-encoding",
        "upgrade",
    }
)
# Request headers not passed to the engine (the token stays at the front end).
DROPPED_REQUEST_HEADERS = HOP_BY_HOP | {"host", "authorization", "content-length"}
DROPPED_RESPONSE_HEADERS = HOP_BY_HOP | {"server", "date"}
INVALID_TOKEN_CHALLENGE = (
    'Bearer error="invalid_token" error_description="The access token could not be verified"'
)


@dataclass
class EmulatorConfig:
    """Everything the emulator does; `validate()` names the first bad value."""

    start_delay: float = 5.0
    idle_timeout: float = 60.0
    max_instances: int = 1
    concurrency: int = 4
    queue_timeout: float = 10.0
    request_timeout: float = 300.0
    min_instances: int = 0
    startup_timeout: float = 120.0  # the engine must answer this long after it was spawned
    # --- IAM ---
    require_auth: bool = True
    audiences: tuple[str, ...] = ()  # empty: the emulator's own http://127.0.0.1:P, localhost:P
    certs_url: str | None = None
    invokers: frozenset[str] | None = None  # None: any verified Google account may invoke
    clock_skew: int = 10
    certs_cache_seconds: float = 300.0
    # --- upstream ---
    engine_args: tuple[str, ...] = ()
    engine_log: Path | None = None  # None: the engine writes to this process's stdout
    upstream_url: str | None = None  # an always-on upstream instead of a managed engine
    connect_timeout: float = 5.0

    def validate(self) -> None:
        checks: list[tuple[bool, str]] = [
            (self.start_delay >= 0, f"start_delay must be >= 0, got {self.start_delay}"),
            (self.idle_timeout > 0, f"idle_timeout must be > 0, got {self.idle_timeout}"),
            (self.max_instances >= 1, f"max_instances must be >= 1, got {self.max_instances}"),
            (self.concurrency >= 1, f"concurrency must be >= 1, got {self.concurrency}"),
            (self.queue_timeout >= 0, f"queue_timeout must be >= 0, got {self.queue_timeout}"),
            (
                self.request_timeout > 0,
                f"request_timeout must be > 0, got {self.request_timeout}",
            ),
            (
                self.min_instances in (0, 1),
                f"min_instances must be 0 or 1, got {self.min_instances}",
            ),
            (
                self.startup_timeout > 0,
                f"startup_timeout must be > 0, got {self.startup_timeout}",
            ),
            (
                not self.require_auth or bool(self.certs_url),
                "certs_url is required when authentication is on (or allow unauthenticated)",
            ),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)

    @property
    def capacity(self) -> int:
        return self.max_instances * self.concurrency


# --- ID token verification -----------------------------------------------------------------


class TokenRejected(Exception):
    """The request may not pass; `status` is what Cloud Run would answer."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


class _CertsCachingRequest(google_requests.Request):
    """google-auth transport that caches the certificates response and caps timeouts.

    `verify_token` fetches the certificates on every call; Google's verifiers cache them
    (Cache-Control), so does this.
    """

    def __init__(self, certs_url: str, max_age: float, timeout: float) -> None:
        super().__init__()
        self._certs_url = certs_url
        self._max_age = max_age
        self._timeout = timeout
        self._lock = threading.Lock()
        self._cached: Any = None
        self._cached_until = 0.0
        self.fetched_at = 0.0

    def invalidate(self) -> None:
        with self._lock:
            self._cached = None

    def cached_key_ids(self) -> set[str]:
        with self._lock:
            if self._cached is None:
                return set()
            try:
                return set(json.loads(self._cached.data.decode()))
            except (ValueError, TypeError):
                return set()

    def __call__(  # type: ignore[override]
        self,
        url: str,
        method: str = "GET",
        body: Any = None,
        headers: Any = None,
        timeout: float | None = None,
        **kwargs: Any,
    ) -> Any:
        bounded = self._timeout if timeout is None else min(timeout, self._timeout)
        if method != "GET" or url != self._certs_url:
            return super().__call__(url, method, body, headers, timeout=bounded, **kwargs)
        with self._lock:
            if self._cached is not None and time.monotonic() < self._cached_until:
                return self._cached
            response = super().__call__(url, method, body, headers, timeout=bounded, **kwargs)
            if response.status == 200:
                max_age = self._max_age
                match = re.search(r"max-age=(\d+)", response.headers.get("cache-control", ""))
                if match:
                    max_age = min(max_age, float(match.group(1)))
                self._cached = response
                self._cached_until = time.monotonic() + max_age
                self.fetched_at = time.monotonic()
            return response


def _token_key_id(token: str) -> str | None:
    try:
        header_b64 = token.split(".", 1)[0]
        header = json.loads(base64.urlsafe_b64decode(header_b64 + "=" * (-len(header_b64) % 4)))
        kid = header.get("kid")
        return kid if isinstance(kid, str) else None
    except (ValueError, AttributeError):
        return None


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
        self.certs_url = certs_url
        self.audiences = audiences
        self.invokers = invokers
        self.clock_skew = clock_skew
        self._request = _CertsCachingRequest(certs_url, certs_cache_seconds, timeout)

    def _verify(self, token: str) -> Mapping[str, Any]:
        return id_token.verify_token(
            token,
            self._request,
            audience=self.audiences,
            certs_url=self.certs_url,
            clock_skew_in_seconds=self.clock_skew,
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
            try:
                claims = self._verify(token)
            except (ValueError, google_exceptions.GoogleAuthError):
                # Signed with a key id we have not seen: the signer may have rotated its
                # keys. Refetch the certificates (at most once a second), then decide.
                kid = _token_key_id(token)
                if kid is None or kid in self._request.cached_key_ids():
                    raise
                if time.monotonic() - self._request.fetched_at < 1.0:
                    raise
                self._request.invalidate()
                claims = self._verify(token)
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


# --- the engine "instance" -----------------------------------------------------------------


class StartFailed(Exception):
    pass


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class EngineInstance:
    """The engine subprocess that stands for the service's instances."""

    def __init__(self, config: EmulatorConfig) -> None:
        self.config = config
        self.state = "cold"  # cold | starting | ready | stopping
        self.url: str | None = config.upstream_url
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self.stops = 0
        self.last_start_seconds: float | None = None
        self.last_error: str | None = None
        self._start_task: asyncio.Task[str] | None = None
        self._stop_task: asyncio.Task[None] | None = None
        self._log_file: Any = None
        if config.upstream_url:
            self.state = "ready"

    @property
    def managed(self) -> bool:
        return self.config.upstream_url is None

    def alive(self) -> bool:
        return not self.managed or (self.process is not None and self.process.poll() is None)

    async def ensure_ready(self) -> str:
        """The engine URL, starting the engine first if needed (callers bound the wait)."""
        while True:
            if self.state == "ready" and self.alive() and self.url:
                return self.url
            if self.state == "ready":  # it died under us: Cloud Run would start a new one
                log.warning("engine process exited unexpectedly; starting a new instance")
                self._forget_process()
            if self._stop_task is not None:
                await asyncio.shield(self._stop_task)
                continue
            if self._start_task is None:
                self._start_task = asyncio.create_task(self._start())
                # Failures reach waiting requests; with none left, do not warn about them.
                self._start_task.add_done_callback(
                    lambda task: task.cancelled() or task.exception()
                )
            return await asyncio.shield(self._start_task)

    async def _start(self) -> str:
        self.state = "starting"
        self.starts += 1
        started = time.monotonic()
        log.info(
            "cold start #%d: emulated instance start %.1fs", self.starts, self.config.start_delay
        )
        try:
            await asyncio.sleep(self.config.start_delay)
            url = await self._spawn_and_wait()
        except BaseException as exc:
            self.last_error = str(exc) or type(exc).__name__
            await self._kill_process()
            self.state = "cold"
            raise
        finally:
            self._start_task = None
        self.url = url
        self.state = "ready"
        self.last_start_seconds = time.monotonic() - started
        log.info("instance ready after %.2fs (%s)", self.last_start_seconds, url)
        return url

    async def _spawn_and_wait(self) -> str:
        port = _free_port()
        url = f"http://127.0.0.1:{port}"
        cmd = [sys.executable, "-m", "backend", "--host", "127.0.0.1", "--port", str(port)]
        cmd += list(self.config.engine_args)
        output: Any = None
        if self.config.engine_log is not None:
            self.config.engine_log.parent.mkdir(parents=True, exist_ok=True)
            self._log_file = output = self.config.engine_log.open("ab")
        self.process = subprocess.Popen(
            cmd, stdout=output, stderr=subprocess.STDOUT if output else None, start_new_session=True
        )
        deadline = time.monotonic() + self.config.startup_timeout
        async with httpx.AsyncClient(timeout=httpx.Timeout(1.0)) as client:
            while True:
                if self.process.poll() is not None:
                    raise StartFailed(
                        f"engine exited with code {self.process.returncode} while starting"
                    )
                try:
                    response = await client.get(url + "/")
                    if response.status_code == 200:
                        return url
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline:
                    raise StartFailed(
                        f"engine did not answer within {self.config.startup_timeout:.0f}s"
                    )
                await asyncio.sleep(0.1)

    def stop(self, reason: str) -> asyncio.Task[None] | None:
        """Scale to zero. Takes effect at once: new requests wait for a new instance."""
        if not self.managed or self.state != "ready":
            return None
        self.state = "stopping"
        self._stop_task = asyncio.create_task(self._stop(reason))
        return self._stop_task

    async def _stop(self, reason: str) -> None:
        try:
            log.info("scaling to zero (%s): stopping engine pid %s", reason, self._pid())
            await self._kill_process()
            self.stops += 1
        finally:
            self.state = "cold"
            self.url = None
            self._stop_task = None

    async def shutdown(self) -> None:
        if self._start_task is not None:
            self._start_task.cancel()
            await asyncio.gather(self._start_task, return_exceptions=True)
        if self._stop_task is not None:
            await asyncio.gather(self._stop_task, return_exceptions=True)
        if self.managed:
            if self.process is not None:
                log.info("shutting down: stopping engine pid %s", self._pid())
            await self._kill_process()
            self.state = "cold"

    def _pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    def _forget_process(self) -> None:
        self.process = None
        self.url = None
        self.state = "cold"

    async def _kill_process(self) -> None:
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            try:
                os.killpg(process.pid, signal.SIGTERM)
                await asyncio.to_thread(process.wait, 10)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                await asyncio.to_thread(process.wait, 10)
            except ProcessLookupError:
                pass
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def snapshot(self) -> dict[str, Any]:
        return {
            "state": self.state,
            "engine_pid": self._pid() if self.alive() else None,
            "engine_url": self.url,
            "starts": self.starts,
            "stops": self.stops,
            "last_start_seconds": self.last_start_seconds,
            "last_error": self.last_error,
        }


# --- the front end -------------------------------------------------------------------------


def _google_error_page(status: int, reason: str, detail: str) -> bytes:
    """The HTML Google's front end answers errors with."""
    return (
        "<html><head>\n"
        '<meta http-equiv="content-type" content="text/html;charset=utf-8">\n'
        f"<title>{status} {reason}</title>\n"
        "</head>\n"
        "<body text=#000000 bgcolor=#ffffff>\n"
        f"<h1>Error: {reason}</h1>\n"
        f"<h2>{detail}</h2>\n"
        "<h2></h2>\n"
        "</body></html>\n"
    ).encode()


TOO_LARGE_PAGE = _google_error_page(
    413, "Request Entity Too Large", "Your client issued a request that was too large."
)
UNAVAILABLE_PAGE = _google_error_page(
    503,
    "Service Unavailable",
    "The service you requested is not available yet. Please try again in 30 seconds.",
)


class CloudRunEmulator:
    """The ASGI app."""

    def __init__(self, config: EmulatorConfig, audiences: list[str]) -> None:
        config.validate()
        self.config = config
        self.instance = EngineInstance(config)
        self.verifier: IdTokenVerifier | None = None
        if config.require_auth:
            assert config.certs_url is not None
            self.verifier = IdTokenVerifier(
                config.certs_url,
                audiences,
                invokers=config.invokers,
                clock_skew=config.clock_skew,
                certs_cache_seconds=config.certs_cache_seconds,
                timeout=config.connect_timeout,
            )
        self.audiences = audiences
        self.in_flight = 0
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()
        self.last_activity = time.monotonic()
        self.counters: dict[str, int] = collections.Counter()
        self._client: httpx.AsyncClient | None = None
        self._reaper: asyncio.Task[None] | None = None
        self._warmer: asyncio.Task[None] | None = None

    # --- ASGI --------------------------------------------------------------------------
    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
        elif scope["type"] == "http":
            await self._http(scope, receive, send)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                self._client = httpx.AsyncClient(
                    timeout=httpx.Timeout(
                        connect=self.config.connect_timeout,
                        read=self.config.request_timeout,
                        write=30.0,
                        pool=self.config.request_timeout,
                    ),
                    limits=httpx.Limits(max_connections=self.config.capacity + 4),
                )
                self._reaper = asyncio.create_task(self._reap_idle())
                if self.config.min_instances and self.instance.managed:
                    self._warmer = asyncio.create_task(self._warm())
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                if self._reaper is not None:
                    self._reaper.cancel()
                    await asyncio.gather(self._reaper, return_exceptions=True)
                await self.instance.shutdown()
                if self._client is not None:
                    await self._client.aclose()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _warm(self) -> None:
        try:
            await self.instance.ensure_ready()
        except Exception as exc:
            log.error("could not start the minimum instance: %s", exc)

    def state(self) -> dict[str, Any]:
        return {
            **self.instance.snapshot(),
            "in_flight": self.in_flight,
            "queued": sum(1 for w in self._waiters if not w.done()),
            "capacity": self.config.capacity,
            "idle_seconds": round(time.monotonic() - self.last_activity, 3),
            "counters": dict(self.counters),
        }

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        arrived = time.monotonic()
        deadline = arrived + self.config.request_timeout
        path = scope.get("path", "/")
        if path == STATE_PATH and scope["method"] == "GET":
            await _respond(send, 200, json.dumps(self.state()).encode(), "application/json")
            return
        self.counters["requests"] += 1
        self.counters[f"{scope['method']} {path}"] += 1  # lets tests count sends per endpoint
        headers = _header_map(scope)

        if self.verifier is not None:
            try:
                await asyncio.to_thread(self.verifier.principal, headers.get("authorization"))
            except TokenRejected as rejected:
                await self._reject(send, path, rejected)
                return

        if not await self._acquire_slot():
            self.counters["429"] += 1
            log.warning(
                "429: no available instance (%d in flight, waited %.1fs)",
                self.in_flight,
                self.config.queue_timeout,
            )
            retry_after = str(max(1, math.ceil(self.config.queue_timeout)))
            await _respond(
                send, 429, b"Rate exceeded.", "text/plain", [(b"retry-after", retry_after.encode())]
            )
            return
        disconnected: asyncio.Task[None] | None = None
        try:
            self.last_activity = time.monotonic()
            body = await _read_body(receive)
            if body is None:
                await _respond(send, 413, TOO_LARGE_PAGE, "text/html")
                return
            # From here on the only message left is the client going away.
            disconnected = asyncio.create_task(_wait_for_disconnect(receive))
            starting = asyncio.create_task(self.instance.ensure_ready())
            done, _ = await asyncio.wait(
                {starting, disconnected},
                timeout=max(0.0, deadline - time.monotonic()),
                return_when=asyncio.FIRST_COMPLETED,
            )
            if starting not in done:
                # Only this request stops waiting; the instance start itself goes on.
                starting.cancel()
                if disconnected in done:
                    self._client_gone(path, "while held for a cold start")
                else:
                    await self._timed_out(send, started=False)
                return
            try:
                upstream = starting.result()
            except Exception as exc:
                log.error("503: the instance failed to start: %s", exc)
                self.counters["503"] += 1
                await _respond(send, 503, UNAVAILABLE_PAGE, "text/html")
                return
            await self._forward(scope, send, body, upstream, deadline, disconnected)
        except _ClientGone:
            self._client_gone(path, "while sending the request")
        finally:
            if disconnected is not None:
                disconnected.cancel()
            self._release_slot()
            self.last_activity = time.monotonic()

    def _client_gone(self, path: str, when: str) -> None:
        self.counters["client_disconnects"] += 1
        log.info("client disconnected %s: %s dropped", when, path)

    async def _reject(self, send: Send, path: str, rejected: TokenRejected) -> None:
        self.counters[str(rejected.status)] += 1
        log.warning("%d for %s: %s", rejected.status, path, rejected.reason)
        quoted = html.escape(path)
        if rejected.status == 401:
            page = _google_error_page(
                401,
                "Unauthorized",
                f"Your client does not have permission to the requested URL <code>{quoted}</code>.",
            )
            extra = [(b"www-authenticate", INVALID_TOKEN_CHALLENGE.encode())]
            await _respond(send, 401, page, "text/html; charset=UTF-8", extra)
        elif rejected.status == 403:
            page = _google_error_page(
                403,
                "Forbidden",
                f"Your client does not have permission to get URL <code>{quoted}</code> "
                "from this server.",
            )
            await _respond(send, 403, page, "text/html; charset=UTF-8")
        else:
            await _respond(send, rejected.status, rejected.reason.encode(), "text/plain")

    async def _timed_out(self, send: Send, *, started: bool) -> None:
        self.counters["504"] += 1
        if started:
            log.warning("request timeout (%.0fs): cutting the stream", self.config.request_timeout)
            return  # returning without finishing the response makes uvicorn drop the connection
        log.warning("504: request timeout (%.0fs)", self.config.request_timeout)
        await _respond(send, 504, b"upstream request timeout", "text/plain")

    # --- capacity ----------------------------------------------------------------------
    async def _acquire_slot(self) -> bool:
        if self.in_flight < self.config.capacity and not self._waiters:
            self.in_flight += 1
            return True
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await asyncio.wait({waiter}, timeout=self.config.queue_timeout)
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self._release_slot()  # handed over while we were being cancelled
            waiter.cancel()
            raise
        finally:
            if waiter in self._waiters:
                self._waiters.remove(waiter)
        if waiter.done() and not waiter.cancelled():
            return True  # a finishing request handed its slot over
        waiter.cancel()
        return False

    def _release_slot(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)  # the slot passes on; in_flight stays the same
                return
        self.in_flight -= 1

    async def _reap_idle(self) -> None:
        tick = max(0.05, min(1.0, self.config.idle_timeout / 4))
        while True:
            await asyncio.sleep(tick)
            if (
                self.config.min_instances == 0
                and self.instance.state == "ready"
                and self.in_flight == 0
                and time.monotonic() - self.last_activity >= self.config.idle_timeout
            ):
                self.instance.stop(f"idle for {self.config.idle_timeout:g}s")

    # --- proxying ----------------------------------------------------------------------
    async def _forward(
        self,
        scope: Scope,
        send: Send,
        body: bytes,
        upstream: str,
        deadline: float,
        disconnected: asyncio.Task[None],
    ) -> None:
        assert self._client is not None
        url = upstream + scope.get("raw_path", scope["path"].encode()).decode("latin-1")
        if scope.get("query_string"):
            url += "?" + scope["query_string"].decode("latin-1")
        headers = [
            (name, value)
            for name, value in scope["headers"]
            if name.decode("latin-1").lower() not in DROPPED_REQUEST_HEADERS
        ]
        client_addr = scope.get("client") or ("", 0)
        headers.append((b"x-forwarded-for", str(client_addr[0]).encode()))
        headers.append((b"x-forwarded-proto", scope.get("scheme", "http").encode()))
        request = self._client.build_request(scope["method"], url, headers=headers, content=body)
        started = False

        async def pump() -> None:
            nonlocal started
            assert self._client is not None
            response = await self._client.send(request, stream=True)
            try:
                out_headers = [
                    (name.lower(), value)
                    for name, value in response.headers.raw
                    if name.decode("latin-1").lower() not in DROPPED_RESPONSE_HEADERS
                ]
                out_headers.append((b"server", b"Google Frontend"))
                await send(
                    {
                        "type": "http.response.start",
                        "status": response.status_code,
                        "headers": out_headers,
                    }
                )
                started = True
                async for chunk in response.aiter_raw():
                    if chunk:
                        await send({"type": "http.response.body", "body": chunk, "more_body": True})
                await send({"type": "http.response.body", "body": b"", "more_body": False})
            finally:
                await response.aclose()  # closes the upstream connection if not finished

        pump_task = asyncio.create_task(pump())
        try:
            done, _ = await asyncio.wait(
                {pump_task, disconnected},
                timeout=max(0.0, deadline - time.monotonic()),
                return_when=asyncio.FIRST_COMPLETED,
            )
        finally:
            pump_task.cancel()  # on disconnect or timeout: closes the upstream request
            await asyncio.gather(pump_task, return_exceptions=True)

        if pump_task in done and not pump_task.cancelled():
            exc = pump_task.exception()
            if exc is None:
                return
            if started:
                log.warning("upstream stream broke: %s", type(exc).__name__)
                return
            if isinstance(exc, httpx.TransportError):
                self.counters["503"] += 1
                log.error("503: engine unreachable: %s", type(exc).__name__)
                await _respond(send, 503, b"upstream connect error", "text/plain")
                return
            raise exc
        if disconnected in done:
            self._client_gone(scope["path"], "during the answer; upstream request closed")
            return
        await self._timed_out(send, started=started)


async def _wait_for_disconnect(receive: Receive) -> None:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return


def _header_map(scope: Scope) -> dict[str, str]:
    return {
        name.decode("latin-1").lower(): value.decode("latin-1") for name, value in scope["headers"]
    }


class _ClientGone(Exception):
    pass


async def _read_body(receive: Receive) -> bytes | None:
    """The request body, None if larger than Cloud Run accepts."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise _ClientGone
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > MAX_REQUEST_BYTES:
            return None
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


async def _respond(
    send: Send,
    status: int,
    body: bytes,
    content_type: str,
    extra: list[tuple[bytes, bytes]] | None = None,
) -> None:
    headers = [
        (b"content-type", content_type.encode()),
        (b"content-length", str(len(body)).encode()),
        (b"server", b"Google Frontend"),
        *(extra or []),
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})


# --- running it ----------------------------------------------------------------------------


def default_audiences(port: int) -> list[str]:
    return [f"http://127.0.0.1:{port}", f"http://localhost:{port}"]


class RunningEmulator:
    """An emulator serving on a background thread (tests, embedding)."""

    def __init__(self, app: CloudRunEmulator, server: uvicorn.Server, sock: socket.socket) -> None:
        self.app = app
        self._server = server
        self._sock = sock
        self.port = int(sock.getsockname()[1])
        self.url = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(
            target=server.run, kwargs={"sockets": [sock]}, name="cloudrun-emulator", daemon=True
        )

    def start(self, timeout: float = 10.0) -> RunningEmulator:
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the Cloud Run emulator did not start")
            time.sleep(0.02)
        return self

    def state(self, timeout: float = 5.0) -> dict[str, Any]:
        response = httpx.get(self.url + STATE_PATH, timeout=timeout)
        response.raise_for_status()
        return response.json()

    def stop(self, timeout: float = 30.0) -> None:
        self._server.should_exit = True
        self._thread.join(timeout)
        self._sock.close()

    def __enter__(self) -> RunningEmulator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _bind(host: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(128)
    sock.setblocking(False)
    return sock


def build_emulator(config: EmulatorConfig, port: int) -> CloudRunEmulator:
    audiences = list(config.audiences) or default_audiences(port)
    return CloudRunEmulator(config, audiences)


def start_emulator(
    config: EmulatorConfig, host: str = "127.0.0.1", port: int = 0
) -> RunningEmulator:
    """Serve the emulator on a background thread; `.url`, `.state()`, `.stop()`."""
    sock = _bind(host, port)
    app = build_emulator(config, int(sock.getsockname()[1]))
    server = uvicorn.Server(
        uvicorn.Config(app, log_level="warning", lifespan="on", server_header=False)
    )
    return RunningEmulator(app, server, sock).start()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m backend.cloudrun",
        description=(
            "Cloud Run emulator in front of the local engine: ID-token IAM, scale to zero "
            "with held cold requests, max instances x concurrency with 429s, request timeout."
        ),
    )
    parser.add_argument("--host", default="127.0.0.1", help="bind address")
    parser.add_argument("--port", type=int, default=8080, help="port (Cloud Run's PORT)")
    parser.add_argument(
        "--start-delay",
        type=float,
        default=5.0,
        help="emulated instance start before the engine is spawned (s)",
    )
    parser.add_argument(
        "--idle-timeout",
        type=float,
        default=60.0,
        help="scale to zero after this long without requests (s)",
    )
    parser.add_argument(
        "--min-instances",
        type=int,
        default=0,
        choices=(0, 1),
        help="1 keeps the engine running (no scale to zero)",
    )
    parser.add_argument("--max-instances", type=int, default=1)
    parser.add_argument("--concurrency", type=int, default=4, help="requests per instance at once")
    parser.add_argument(
        "--queue-timeout",
        type=float,
        default=10.0,
        help="how long a request beyond capacity waits before 429 (s)",
    )
    parser.add_argument(
        "--request-timeout", type=float, default=300.0, help="504 / stream cut after this long (s)"
    )
    parser.add_argument(
        "--startup-timeout",
        type=float,
        default=120.0,
        help="how long the engine may take to answer once spawned (s)",
    )
    parser.add_argument(
        "--engine-args",
        default="",
        help="extra arguments for `python -m backend`, e.g. '--num-parallel 4'",
    )
    parser.add_argument(
        "--engine-log",
        type=Path,
        default=None,
        help="file for the engine's output (default: this terminal)",
    )
    parser.add_argument(
        "--upstream", default=None, help="proxy to this always-on URL instead of managing an engine"
    )
    auth = parser.add_argument_group("IAM")
    auth.add_argument(
        "--allow-unauthenticated",
        action="store_true",
        help="do not require ID tokens (like --allow-unauthenticated)",
    )
    auth.add_argument(
        "--certs-url",
        default=None,
        help="certificates that sign accepted ID tokens (Google: "
        "https://www.googleapis.com/oauth2/v1/certs)",
    )
    auth.add_argument(
        "--audience",
        action="append",
        default=[],
        help="accepted token audience (repeatable; default: this server's "
        "http://127.0.0.1:PORT and http://localhost:PORT)",
    )
    auth.add_argument(
        "--invoker",
        action="append",
        default=None,
        help="account email allowed to invoke (repeatable; default: any)",
    )
    auth.add_argument(
        "--metadata",
        action="store_true",
        help="also run the fake metadata server and trust its tokens",
    )
    auth.add_argument(
        "--metadata-port",
        type=int,
        default=0,
        help="port of the fake metadata server (0 = any free port)",
    )
    auth.add_argument(
        "--token-lifetime",
        type=float,
        default=3600.0,
        help="lifetime of the fake metadata server's ID tokens (s)",
    )
    auth.add_argument(
        "--env-file",
        type=Path,
        default=None,
        help="write the UI's environment (KEY=value lines) to this file",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per proxied request

    metadata = None
    certs_url = args.certs_url
    if args.metadata:
        from backend.fake_metadata import start_fake_metadata

        metadata = start_fake_metadata(port=args.metadata_port, token_lifetime=args.token_lifetime)
        certs_url = certs_url or metadata.certs_url
    config = EmulatorConfig(
        start_delay=args.start_delay,
        idle_timeout=args.idle_timeout,
        max_instances=args.max_instances,
        concurrency=args.concurrency,
        queue_timeout=args.queue_timeout,
        request_timeout=args.request_timeout,
        min_instances=args.min_instances,
        startup_timeout=args.startup_timeout,
        require_auth=not args.allow_unauthenticated,
        audiences=tuple(args.audience),
        certs_url=certs_url,
        invokers=frozenset(args.invoker) if args.invoker else None,
        engine_args=tuple(shlex.split(args.engine_args)),
        engine_log=args.engine_log,
        upstream_url=args.upstream.rstrip("/") if args.upstream else None,
    )
    try:
        config.validate()
        sock = _bind(args.host, args.port)
    except (ValueError, OSError) as exc:
        parser.error(str(exc))
    port = int(sock.getsockname()[1])
    app = build_emulator(config, port)
    env = {"LLM_BACKEND_URL": f"http://127.0.0.1:{port}"}
    if config.require_auth:
        env["LLM_AUTH"] = "google"
    if metadata is not None:
        env.update(metadata.env())
    lines = [f"{key}={value}" for key, value in env.items()]
    print(f"Cloud Run emulator on http://{args.host}:{port} (state: {STATE_PATH})", flush=True)
    print("Give the UI this environment:", flush=True)
    for line in lines:
        print(f"  {line}", flush=True)
    if args.env_file is not None:
        args.env_file.write_text("".join(line + "\n" for line in lines))
    server = uvicorn.Server(
        uvicorn.Config(app, log_level="warning", lifespan="on", server_header=False)
    )
    try:
        server.run(sockets=[sock])
    finally:
        if metadata is not None:
            metadata.stop()


if __name__ == "__main__":
    main()
