"""How the page's own files travel: compressed, and cached by the browser for as long as
they cannot change.

    launch(..., app_kwargs={"middleware": [static_assets_middleware()]})

- **Compression.** The page itself (`/`) carries the app's whole config, about 640 KB of
  JSON in the HTML, and Gradio sends it uncompressed: its own Brotli middleware
  (gradio/routes.py, `BrotliMiddleware`) compresses only paths that end in a compressible
  file extension (`.js`, `.css`, ...). Paths without an extension (the page, `/config`,
  the queue's answers) get Starlette's GZipMiddleware here, from 1 KB, except server-sent
  event streams (`text/event-stream`, the chat's tokens), which it leaves alone so streams
  stay streams (starlette/middleware/gzip.py `DEFAULT_EXCLUDED_CONTENT_TYPES`).
- **Cache lifetimes.** `/assets/` are Gradio's built files, named by their content hash
  (`index-DphvyggB.js`): a new Gradio version means new names, so a browser may keep them a
  year without asking again. `/static/` files (Gradio's scripts and images) keep their names
  across versions: a day. A Cache-Control the app set itself wins.
"""

from __future__ import annotations

from starlette.middleware import Middleware
from starlette.middleware.gzip import GZipMiddleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

COMPRESS_FROM_BYTES = 1024  # smaller answers gain less than the header costs
HASHED_BUILD_FILES = "/assets/"  # Gradio's built scripts and styles, content-hashed names
STATIC_BUILD_FILES = "/static/"  # Gradio's own scripts and images, names kept across versions
GRADIO_BUILD_FILES = (HASHED_BUILD_FILES, STATIC_BUILD_FILES)
CACHE_CONTROL_BY_PREFIX: tuple[tuple[str, bytes], ...] = (
    (HASHED_BUILD_FILES, b"public, max-age=31536000, immutable"),
    (STATIC_BUILD_FILES, b"public, max-age=86400"),
)


class CompressPages:
    """GZip for the responses Gradio's Brotli leaves as they are: paths without a file
    extension."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.gzip = GZipMiddleware(app, minimum_size=COMPRESS_FROM_BYTES)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        last_segment = scope.get("path", "").rsplit("/", 1)[-1]
        if scope["type"] == "http" and "." not in last_segment:
            await self.gzip(scope, receive, send)
        else:
            await self.app(scope, receive, send)


class CacheLifetimes:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        lifetime = cache_control_for(scope) if scope["type"] == "http" else None
        if lifetime is None:
            await self.app(scope, receive, send)
            return

        async def send_with_lifetime(message: Message) -> None:
            if message["type"] == "http.response.start" and message.get("status") == 200:
                headers = list(message.get("headers", []))
                if all(name.lower() != b"cache-control" for name, _ in headers):
                    headers.append((b"cache-control", lifetime))
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, send_with_lifetime)


def cache_control_for(scope: Scope) -> bytes | None:
    if scope.get("method") not in ("GET", "HEAD"):
        return None
    path: str = scope.get("path", "")
    matching = (value for prefix, value in CACHE_CONTROL_BY_PREFIX if path.startswith(prefix))
    return next(matching, None)


def static_assets_middleware() -> list[Middleware]:
    """Compression outside, cache lifetimes inside (both only touch response headers and
    bodies that are not event streams)."""
    return [
        Middleware(CompressPages),
        Middleware(CacheLifetimes),
    ]
