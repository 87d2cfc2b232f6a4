"""Limits every HTTP request meets before Gradio parses it (an ASGI middleware):

- a body larger than `max_body_bytes` is refused with 413, by its Content-Length before
  anything is read, or (chunked, or a lying length) as soon as more arrives: Gradio would
  otherwise parse a 50 MB JSON history into memory, and CPython seldom gives that memory
  back to the system;
- Gradio's file upload route (`/gradio_api/upload`, multipart; how an image reaches a
  message: ui/turn/images.py) has a cap of its own, `max_upload_bytes`: the image cap
  (LLM_IMAGE_MAX_BYTES, 10 MB) plus `MULTIPART_OVERHEAD_BYTES` for the form's headers.
  Only that route gets it; every other body keeps `max_body_bytes` (1 MiB), so an image
  never travels inside a queue join (the join carries the uploaded file's path). Each
  upload counts as an event against `events_per_minute`, so a client cannot fill the
  instance's disk faster than it may send messages;
- a URL query longer than `MAX_QUERY_BYTES` gets a short page (414) saying the link is
  too long: Gradio parses the page's URL with httpx, which raises on URLs over 64 KB, and
  the user would see "Internal Server Error";
- each client may start at most `events_per_minute` events (queue joins and direct API
  calls) a minute, on every endpoint (/undo, /share_chat, /leaderboard, /models, ...),
  on top of the per-page message limits (ui/turn/). 429 with Retry-After beyond it.

The client is who ui/web/rate_limit.py says (Cloud Run's last X-Forwarded-For hop; elsewhere
the socket peer, which uvicorn rewrites only for LLM_TRUSTED_PROXIES).
"""

from __future__ import annotations

import math

from starlette.datastructures import Headers
from starlette.middleware import Middleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ui.view.render import TOO_LONG_PAGE
from ui.web.rate_limit import RateLimiter, client_key_from

# The paths (after the app's root) that start an event; everything else (page, assets,
# the event stream, heartbeats) is not counted.
EVENT_PATH_PARTS = ("/queue/join", "/call/", "/run/", "/upload")
UPLOAD_PATH_SUFFIX = "/upload"
# A multipart form around one file: boundaries and part headers, with room for a long name.
MULTIPART_OVERHEAD_BYTES = 16 * 1024
# Above any share link this app reads (ui/share/format.py: MAX_DECODE_TOKEN_CHARS, 13 500), and
# below what uvicorn's HTTP parser reads reliably: h11 refuses (400, or a reset) a request
# head over 16 KiB that arrives in more than one read (h11 DEFAULT_MAX_INCOMPLETE_EVENT_SIZE),
# so only a query under that, with room for a browser's other headers, surely gets this page.
MAX_QUERY_BYTES = 14_000


class BodyTooLarge(Exception):
    pass


async def _plain(
    send: Send,
    status: int,
    text: str,
    extra: list[tuple[bytes, bytes]],
    kind: str = "text/plain",
) -> None:
    body = text.encode()
    headers = [
        (b"content-type", f"{kind}; charset=utf-8".encode()),
        (b"content-length", str(len(body)).encode()),
        *extra,
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class RequestLimits:
    def __init__(
        self,
        app: ASGIApp,
        *,
        max_body_bytes: int,
        events_per_minute: int,
        max_upload_bytes: int | None = None,
    ) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.max_upload_bytes = max_upload_bytes if max_upload_bytes is not None else max_body_bytes
        self.events = RateLimiter(events_per_minute)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope.get("path", "")
        limit = self.max_upload_bytes if path.endswith(UPLOAD_PATH_SUFFIX) else self.max_body_bytes
        if len(scope.get("query_string", b"")) > MAX_QUERY_BYTES:
            await _plain(send, 414, TOO_LONG_PAGE, [], "text/html")
            return
        headers = Headers(scope=scope)
        if scope.get("method") == "POST" and any(p in path for p in EVENT_PATH_PARTS):
            client = scope.get("client")
            key = client_key_from(headers, client[0] if client else None)
            wait = self.events.acquire(key)
            if wait is not None:
                retry = str(max(1, math.ceil(wait))).encode()
                await _plain(send, 429, "Too many requests; try again shortly.\n",
                             [(b"retry-after", retry)])  # fmt: skip
                return
        length = headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > limit):
            await _plain(send, 413, self._too_large(limit), [])
            return
        received = 0
        started = False

        async def bounded_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLarge()
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, bounded_receive, tracking_send)
        except BodyTooLarge:
            if not started:
                await _plain(send, 413, self._too_large(limit), [])

    @staticmethod
    def _too_large(limit: int) -> str:
        return f"Request too large (the limit is {limit // 1024} KB).\n"


def request_limits_middleware(
    max_body_bytes: int, events_per_minute: int, max_image_bytes: int | None = None
) -> Middleware:
    """`max_image_bytes`: the image cap; the upload route takes that plus the multipart
    form's overhead (None: uploads get `max_body_bytes` too)."""
    upload = None if max_image_bytes is None else max_image_bytes + MULTIPART_OVERHEAD_BYTES
    return Middleware(
        RequestLimits,
        max_body_bytes=max_body_bytes,
        events_per_minute=events_per_minute,
        max_upload_bytes=upload,
    )
