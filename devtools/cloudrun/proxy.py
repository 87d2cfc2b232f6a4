"""The front end: an ASGI app that checks the caller, holds requests for a cold start,
bounds them by capacity and time, and streams them to and from the engine."""

from __future__ import annotations

import asyncio
import collections
import html
import json
import logging
import math
import time
from typing import Any

import httpx
from starlette.types import Receive, Scope, Send

from devtools.cloudrun.capacity import RequestSlots
from devtools.cloudrun.config import EmulatorConfig
from devtools.cloudrun.instances import EngineInstance
from devtools.cloudrun.tokens import IdTokenVerifier, TokenRejected

log = logging.getLogger("devtools.cloudrun")

STATE_PATH = "/_emulator/state"
# Paths counted by name in the state (the Ollama API); any other path is counted as
# "other", so the state shows no path a user sent (it may hold a share link or a secret).
COUNTED_PATHS = frozenset(
    {"/", "/api/version", "/api/tags", "/api/ps", "/api/chat", "/api/generate", "/api/show",
     "/api/pull", "/api/push", "/api/delete", "/api/create", "/api/copy", "/api/embed"}
)  # fmt: skip
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
        self.slots = RequestSlots(config.capacity)
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
        snapshot = self.instance.snapshot()
        snapshot.pop("engine_url", None)  # the instance's internal address is not shown
        return {
            **snapshot,
            "in_flight": self.slots.in_flight,
            "queued": self.slots.queued,
            "capacity": self.config.capacity,
            "idle_seconds": round(time.monotonic() - self.last_activity, 3),
            "counters": dict(self.counters),
        }

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        arrived = time.monotonic()
        deadline = arrived + self.config.request_timeout
        path = scope.get("path", "/")
        raw_target = scope.get("raw_path") or path.encode()
        if not raw_target.startswith(b"/"):
            # Absolute-form or "@host/x" targets: the upstream URL is built by appending
            # the target to the instance's address, so such a target could point it at
            # another host. Cloud Run's front end answers 400 too.
            self.counters["400"] += 1
            await _respond(send, 400, b"Bad request target.", "text/plain")
            return
        if path == STATE_PATH and scope["method"] == "GET":
            await _respond(send, 200, json.dumps(self.state()).encode(), "application/json")
            return
        self.counters["requests"] += 1
        counted = path if path in COUNTED_PATHS else "other"
        self.counters[f"{scope['method']} {counted}"] += 1  # tests count sends per endpoint
        headers = _header_map(scope)

        if self.verifier is not None:
            try:
                await asyncio.to_thread(self.verifier.principal, headers.get("authorization"))
            except TokenRejected as rejected:
                await self._reject(send, path, rejected)
                return

        if not await self.slots.acquire(self.config.queue_timeout):
            self.counters["429"] += 1
            log.warning(
                "429: no available instance (%d in flight, waited %.1fs)",
                self.slots.in_flight,
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
            self.slots.release()
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

    # --- scale to zero ----------------------------------------------------------------
    async def _reap_idle(self) -> None:
        tick = max(0.05, min(1.0, self.config.idle_timeout / 4))
        while True:
            await asyncio.sleep(tick)
            if (
                self.config.min_instances == 0
                and self.instance.state == "ready"
                and self.slots.in_flight == 0
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
