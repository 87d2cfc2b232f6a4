"""The one boundary between the UI and the model backends (Ollama's HTTP API, or an
OpenAI-compatible one: ui/backend_access/openai_api.py).

Built on the official `ollama.AsyncClient`, which forwards httpx keyword arguments, so each
client gets explicit timeouts, a bounded connection pool and (for Cloud Run backends) an
`httpx.Auth` that adds a Google ID token. The probe (GET /api/version, which the ollama
client has no call for) uses a plain `httpx.AsyncClient` built from the same options. Every
failure leaves this module as one of the errors in `ui.errors`, with a message a user
understands (`BackendErrors`, by the table `ERRORS`); callers never see httpx or ollama
exceptions.

Streaming API::

    async for event in client.chat_stream(model, messages, options={...}):
        if isinstance(event, TokenDelta): ...   # event.text
        else: ...                               # ReplyDone: event.stats (Ollama's numbers)

Routing: `settings.backend_routes` maps a model family ("gemma", "llama", ...) to its own
backend URL; every other model uses the default backend URL. One `BackendClients` is kept
per backend URL per event loop (httpx clients must not cross loops; Gradio runs all async
handlers in one loop, so in practice there is one set of clients per backend).

Kinds: each backend URL speaks one API (`settings.backend_api`, or its route's). Every
public call below dispatches on it in one place: an `OpenAIBackend` in `BackendClients`
means the OpenAI-compatible API, else Ollama's. Callers (the turn pipeline, warming, the
model directory) get the same events, stats and errors from both; what only Ollama can
tell (a load under way, /api/ps) is asked through `reports_loads`. A 404 from a backend
gets one check of which API it speaks (`ApiCheck`): one set up with the wrong API gets an
error that names the setting to change (`BackendMisconfigured`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import weakref
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Mapping, Sequence
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any, NamedTuple, TypedDict, cast

import httpx
import ollama
import openai
import pydantic

from catalog import Family, family_of
from ui.backend_access.auth import auth_for, denied_message, root_url
from ui.backend_access.events import (  # re-exported: callers import them from here
    MODEL_LOAD_MIN_S as MODEL_LOAD_MIN_S,
)
from ui.backend_access.events import NS_PER_S as NS_PER_S
from ui.backend_access.events import ChatEvent, ReplyDone, ReplyStats, TokenDelta
from ui.backend_access.events import was_a_model_load as was_a_model_load
from ui.backend_access.openai_api import HEALTH_PATH, MODELS_PATH, OpenAIBackend
from ui.errors import (
    BackendAuthError,
    BackendBusy,
    BackendError,
    BackendMisconfigured,
    BackendResponseError,
    BackendTimeout,
    BackendUnreachable,
    ModelNotFound,
)
from ui.settings import DEFAULT_LOCAL_BACKEND, BackendApi, Settings

logger = logging.getLogger(__name__)

# Ollama's 503 when OLLAMA_MAX_QUEUE requests already wait (server/sched.go ErrMaxQueue).
OLLAMA_QUEUE_FULL = "maximum pending requests exceeded"
OLLAMA_VERSION_PATH = "/api/version"  # Ollama's probe; what answers here speaks its API
BODY_END_GRACE_S = 1.0  # how long a finished reply's body may take to end


# === typed results (the chat events and ReplyStats: ui/backend_access/events.py) =========
@dataclass(frozen=True)
class ModelInfo:
    """One model a backend offers (from /api/tags, or /v1/models: names only)."""

    name: str
    family: Family  # our grouping: gemma / llama / mistral / other
    reported_family: str | None  # what the backend said, e.g. "gemma3"
    parameter_size: str | None  # e.g. "270M"
    quantization: str | None  # e.g. "Q4_K_M"
    size_bytes: int | None
    backend_url: str


@dataclass(frozen=True)
class RunningModel:
    """A model loaded in a backend's memory (from /api/ps)."""

    name: str
    size_bytes: int | None
    size_vram: int | None
    expires_at: str | None
    backend_url: str


# === the client ==========================================================================
class HttpOptions(TypedDict):
    """What every client of one backend is built with, so all its calls travel alike."""

    timeout: httpx.Timeout
    limits: httpx.Limits
    auth: httpx.Auth | None
    follow_redirects: bool


@dataclass(frozen=True)
class BackendClients:
    """The clients of one backend in one event loop, built together from one `HttpOptions`."""

    ollama: ollama.AsyncClient  # chat, load, /api/tags, /api/ps (an Ollama backend)
    # For what the ollama client has no call for: the probe, the API check on a 404.
    http: httpx.AsyncClient
    # An OpenAI-compatible backend: every call but the probe goes here (None: Ollama's API).
    openai: OpenAIBackend | None = None

    async def aclose(self) -> None:
        await self.ollama.close()
        await self.http.aclose()
        if self.openai is not None:
            await self.openai.aclose()


class BackendClient:
    """Talks to one default backend plus optional per-family backends."""

    def __init__(self, settings: Settings, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.settings = settings
        self.clock = clock  # times an OpenAI-compatible reply's pieces (its tokens/s)
        self.default_url = (settings.backend_url or DEFAULT_LOCAL_BACKEND).rstrip("/")
        self.routes: dict[str, str] = {
            family.lower(): route.url.rstrip("/")
            for family, route in settings.backend_routes.items()
        }
        # The API each backend speaks (settings make sure a URL has one).
        self.apis: dict[str, BackendApi] = {self.default_url: settings.backend_api}
        for family, route in settings.backend_routes.items():
            self.apis[self.routes[family.lower()]] = route.api or settings.backend_api
        self.api_check = ApiCheck(self)
        self.timeout = httpx.Timeout(
            connect=settings.connect_timeout,
            read=settings.read_timeout,
            write=max(settings.connect_timeout, 10.0),
            pool=settings.connect_timeout,
        )
        # Each running stream holds one connection; leave room above the concurrency limit
        # for model lists and /api/ps (probes have a client of their own). An idle connection
        # is dropped after 5 s, well before a server closes it (Ollama: never; the Google
        # front end: 610 s), so a request never goes out on a connection being closed.
        self.limits = httpx.Limits(
            max_connections=settings.concurrency_limit + 20,
            max_keepalive_connections=20,
            keepalive_expiry=5.0,
        )
        self._clients: weakref.WeakKeyDictionary[
            asyncio.AbstractEventLoop, dict[str, BackendClients]
        ] = weakref.WeakKeyDictionary()

    # --- routing ------------------------------------------------------------------------
    @property
    def backend_urls(self) -> list[str]:
        """Every distinct backend, the default first."""
        urls = [self.default_url]
        urls += [u for u in self.routes.values() if u not in urls]
        return urls

    def url_for(self, model: str, reported_family: str | None = None) -> str:
        return self.routes.get(family_of(model, reported_family), self.default_url)

    def reports_loads(self, model: str | None = None) -> bool:
        """Whether the backend of `model` (None: the default one) tells a model load under
        way (Ollama: /api/ps, load_duration). OpenAI-compatible servers load their models
        at start and report no loads: the cold-start status then says only that the
        instance answers (ui/turn/warming.py, ui/backend_access/status.py)."""
        return self.apis[self.url_for(model) if model else self.default_url] == "ollama"

    def audience_for(self, url: str) -> str:
        """The ID-token audience for a backend (used in access-denied messages)."""
        return self.settings.auth_audience or root_url(url)

    def clients_for(self, url: str) -> BackendClients:
        """The clients of the backend at `url` in the running loop (made at first use)."""
        loop = asyncio.get_running_loop()
        per_loop = self._clients.setdefault(loop, {})
        clients = per_loop.get(url)
        if clients is None:
            # ollama.AsyncClient passes httpx keyword arguments on to its httpx client, and
            # follows redirects by default: the probe's client gets the same.
            options = HttpOptions(
                timeout=self.timeout,
                limits=self.limits,
                auth=auth_for(self.settings, url),
                follow_redirects=True,
            )
            speaks_openai = self.apis.get(url) == "openai"
            clients = per_loop[url] = BackendClients(
                ollama=ollama.AsyncClient(host=url, **options),
                http=httpx.AsyncClient(
                    base_url=url, headers={"Accept": "application/json"}, **options
                ),
                openai=OpenAIBackend(url, httpx.AsyncClient(**options), clock=self.clock)
                if speaks_openai
                else None,
            )
        return clients

    async def aclose(self) -> None:
        """Close the clients of the running loop."""
        loop = asyncio.get_running_loop()
        for clients in self._clients.pop(loop, {}).values():
            await clients.aclose()

    # --- chat ---------------------------------------------------------------------------
    async def chat_stream(
        self,
        model: str,
        messages: Sequence[Mapping[str, Any]],
        *,
        options: Mapping[str, Any] | None = None,
        keep_alive: str | float | None = None,
    ) -> AsyncGenerator[ChatEvent, None]:
        """Stream one reply: TokenDelta events, then exactly one ReplyDone.

        Raises a `ui.errors.BackendError` subclass; text already yielded stays valid.
        Closing the iterator early (the user pressed stop) closes the HTTP stream, which
        makes Ollama stop generating.
        """
        url = self.url_for(model)
        clients = self.clients_for(url)
        client = clients.ollama
        async with BackendErrors(self, url, model=model) as call:
            if clients.openai is not None:
                reply = clients.openai.chat_stream(model, messages, options, call.streaming)
                async with aclosing(reply):
                    async for event in reply:
                        yield event
                return
            parts = await client.chat(
                model=model,
                messages=list(messages),
                options=dict(options) if options else None,
                keep_alive=keep_alive,
                stream=True,
            )
            # It is an async generator; aclosing closes the HTTP stream on early exit.
            stream = cast("AsyncGenerator[ollama.ChatResponse, None]", parts)
            async with aclosing(stream):
                async for part in stream:
                    call.mid_stream = True
                    text = part.message.content if part.message else None
                    if text:
                        yield TokenDelta(text)
                    if part.done:
                        yield ReplyDone(ReplyStats.from_response(part))
                        await _finish_body(stream)
                        return
            raise BackendResponseError("The model backend ended the reply before it was complete.")

    async def load_model(self, model: str, keep_alive: str | float | None = None) -> ReplyStats:
        """Load a model into memory without generating (a chat request with no messages)."""
        url = self.url_for(model)
        clients = self.clients_for(url)
        async with BackendErrors(self, url, model=model) as call:
            if clients.openai is not None:
                # The server loaded its models at start: nothing to load if it serves this.
                if model not in await clients.openai.model_ids():
                    raise call.status_error(404, "not in its model list")
                return ReplyStats()
            response = await clients.ollama.chat(
                model=model, messages=[], keep_alive=keep_alive, stream=False
            )
        return ReplyStats.from_response(response)

    async def capabilities(self, model: str, *, deadline: float | None = None) -> list[str]:
        """What `model` can do, as its backend's /api/show says (`capabilities`, e.g.
        "completion", "vision"); [] when the backend does not say (older Ollama, or the
        OpenAI API, which has no such call: the catalog then decides, models.py `can_see`)."""
        url = self.url_for(model)
        clients = self.clients_for(url)
        if clients.openai is not None:
            return []
        with BackendErrors(self, url, model=model, deadline=deadline):
            async with asyncio.timeout(deadline):
                response = await clients.ollama.show(model)
        return [str(c) for c in response.capabilities or []]

    # --- listing and probing -----------------------------------------------------------
    async def list_models(self, *, deadline: float | None = None) -> list[ModelInfo]:
        """The union of the models of all backends (each model from the backend that serves
        it). Raises the first error only when no backend answered; a failing backend among
        several is logged and skipped. `deadline` (seconds) bounds the whole call."""
        results = await asyncio.gather(
            *(self._list_one(url, deadline) for url in self.backend_urls),
            return_exceptions=True,
        )
        models: dict[str, ModelInfo] = {}
        errors: list[BaseException] = []
        for url, result in zip(self.backend_urls, results, strict=True):
            if isinstance(result, BaseException):
                logger.warning("Listing models of %s failed: %s", url, result)
                errors.append(result)
                continue
            for info in result:
                models.setdefault(info.name, info)
        if errors and not models and len(errors) == len(results):
            raise errors[0]
        return sorted(models.values(), key=lambda m: (m.family, m.name))

    async def _list_one(self, url: str, deadline: float | None) -> list[ModelInfo]:
        clients = self.clients_for(url)
        if clients.openai is not None:
            async with BackendErrors(self, url, deadline=deadline):
                async with asyncio.timeout(deadline):
                    names = await clients.openai.model_ids()
            return [
                ModelInfo(name, family_of(name), None, None, None, None, url)
                for name in names
                if self.url_for(name) == url
            ]
        async with BackendErrors(self, url, deadline=deadline):
            async with asyncio.timeout(deadline):
                response = await clients.ollama.list()
        found: list[ModelInfo] = []
        for entry in response.models:
            if not entry.model:
                continue
            details = entry.details
            reported = details.family if details else None
            # Only keep models this backend is the route for: the list then holds exactly
            # the models a chat request can reach.
            if self.url_for(entry.model, reported) != url:
                continue
            found.append(
                ModelInfo(
                    name=entry.model,
                    family=family_of(entry.model, reported),
                    reported_family=reported,
                    parameter_size=details.parameter_size if details else None,
                    quantization=details.quantization_level if details else None,
                    size_bytes=int(entry.size) if entry.size is not None else None,
                    backend_url=url,
                )
            )
        return found

    async def running_models(self) -> list[RunningModel]:
        """Models loaded right now, over the backends that tell (Ollama's /api/ps)."""
        running: list[RunningModel] = []
        for url in self.backend_urls:
            if self.apis[url] != "ollama":
                continue
            async with BackendErrors(self, url):
                response = await self.clients_for(url).ollama.ps()
            for entry in response.models:
                if not entry.model:
                    continue
                running.append(
                    RunningModel(
                        name=entry.model,
                        size_bytes=int(entry.size) if entry.size is not None else None,
                        size_vram=int(entry.size_vram) if entry.size_vram is not None else None,
                        expires_at=entry.expires_at.isoformat() if entry.expires_at else None,
                        backend_url=url,
                    )
                )
        return running

    async def probe(self, model: str | None = None) -> str:
        """Quick liveness check of the backend serving `model` (default backend if None):
        GET /api/version (an OpenAI-compatible one: /health) within
        `settings.probe_timeout`. Returns the version string ("unknown" when the backend
        tells none). A warm backend answers in milliseconds; a scaled-to-zero one does not."""
        url = self.url_for(model) if model else self.default_url
        deadline = self.settings.probe_timeout
        speaks_openai = self.apis[url] == "openai"
        async with BackendErrors(self, url, deadline=deadline):
            async with asyncio.timeout(deadline):
                # The ollama client has no version call (ollama 0.6); `http` is built with
                # the same auth, timeouts and redirects.
                http = self.clients_for(url).http
                response = await http.get(HEALTH_PATH if speaks_openai else OLLAMA_VERSION_PATH)
                if speaks_openai and response.status_code in (404, 405):
                    return "unknown"  # a server without /health: its answer proves it is up
                response.raise_for_status()
                version = None if speaks_openai else response.json().get("version")
        return str(version or "unknown")


# === error mapping =======================================================================
class _Becomes(NamedTuple):
    """A row of ERRORS: an exception of `catches` becomes `error` with `message`."""

    catches: type[Exception] | tuple[type[Exception], ...]
    error: type[BackendError]
    # str.format over BackendErrors.facts(): never the URL or anything else secret.
    message: str
    # A warning for operators, logging's %-style over {"url": ..., "exc": ...}.
    log: str | None = None


class _StatusOf(NamedTuple):
    """A row of ERRORS: an HTTP error answer; `read` gives (status, the server's message),
    and the status decides the error (BackendErrors.status_error)."""

    catches: type[Exception]
    read: Callable[[Any], tuple[int, str]]


class _CauseOf(NamedTuple):
    """A row of ERRORS: a wrapper whose cause (`__cause__`, when it has one) decides."""

    catches: type[Exception]


ERRORS: tuple[_Becomes | _StatusOf | _CauseOf, ...] = (
    _StatusOf(ollama.ResponseError, lambda exc: (exc.status_code, str(exc.error))),
    # The openai client wraps the httpx error it met (openai/_base_client.py, _streaming.py):
    # that error decides, as on the Ollama path.
    _CauseOf(openai.APIConnectionError),
    _StatusOf(openai.APIStatusError, lambda exc: (exc.status_code, _openai_message(exc))),
    # Any other APIError is an {"error": ...} event inside a 200 stream (_streaming.py).
    _StatusOf(openai.APIError, lambda exc: (-1, exc.message)),
    _Becomes(
        TimeoutError, BackendTimeout, "The model backend did not answer within {deadline:g} s."
    ),
    _Becomes(
        (httpx.ConnectTimeout, httpx.PoolTimeout),
        BackendTimeout,
        "The model backend did not accept a connection within {connect_timeout:g} s.",
    ),
    _Becomes(
        httpx.TimeoutException,
        BackendTimeout,
        "The model backend sent nothing for {read_timeout:g} s.",
    ),
    # ollama turns httpx.ConnectError into the builtin ConnectionError.
    _Becomes(
        (ConnectionError, httpx.ConnectError),
        BackendUnreachable,
        "The model backend cannot be reached (the connection was refused).",
        log="Backend %(url)s refused the connection",
    ),
    _Becomes(
        (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError),
        BackendUnreachable,
        "The connection to the model backend broke off{in_the_reply}.",
    ),
    _StatusOf(
        httpx.HTTPStatusError, lambda exc: (exc.response.status_code, _server_message(exc.response))
    ),
    _Becomes(
        (json.JSONDecodeError, pydantic.ValidationError, KeyError),
        BackendResponseError,
        "The model backend sent an answer the UI cannot read.",
        log="Unreadable answer from %(url)s: %(exc)r",
    ),
    _Becomes(
        (httpx.HTTPError, openai.APIConnectionError),
        BackendUnreachable,
        "Talking to the model backend failed ({name}).",
    ),
)


@dataclass
class BackendErrors:
    """`async with BackendErrors(client, url, ...) as call:` turns any failure in the block
    into a `ui.errors` error, raised from the original; a 404 then gets the API check
    (`ApiCheck`: a backend that speaks the other API becomes `BackendMisconfigured`). The
    first row of ERRORS that matches wins, so a subclass comes before its base::

        Exception                       becomes
        ├── ui.errors.BackendError      itself (ours already, also from ui.backend_access.auth)
        ├── ollama.ResponseError        by its status; -1: an error line inside a 200 stream
        ├── openai.APIError
        │   ├── APIConnectionError      (and APITimeoutError) what its httpx cause becomes
        │   ├── APIStatusError          by its status (429, 503, 401, 404, ...)
        │   └── any other               an error event inside a 200 stream, as ollama's -1
        ├── OSError
        │   ├── TimeoutError            BackendTimeout: asyncio.timeout around a whole call
        │   └── ConnectionError         BackendUnreachable, refused (logged): ollama's
        │                               form of httpx.ConnectError
        ├── httpx.HTTPError
        │   ├── httpx.TimeoutException  BackendTimeout
        │   │   ├── ConnectTimeout, PoolTimeout     ... within connect_timeout
        │   │   └── ReadTimeout, WriteTimeout       ... within read_timeout
        │   ├── httpx.ConnectError      BackendUnreachable, refused (logged)
        │   ├── RemoteProtocolError, ReadError, WriteError
        │   │                           BackendUnreachable, broke off (mid-reply or not)
        │   ├── httpx.HTTPStatusError   by its status (the probe's raise_for_status)
        │   └── any other               BackendUnreachable, named by its type
        ├── JSONDecodeError, pydantic.ValidationError, KeyError
        │                               BackendResponseError, unreadable (logged)
        └── any other                   BackendResponseError, named by its type (logged
                                        with its traceback)

    BaseExceptions (cancellation, GeneratorExit from closing a stream) pass untouched.
    """

    client: BackendClient
    url: str
    model: str | None = None
    deadline: float | None = None
    mid_stream: bool = False  # reply text arrived: a broken connection broke off the reply

    def streaming(self) -> None:
        """The reply has begun (its first chunk came)."""
        self.mid_stream = True

    def __enter__(self) -> BackendErrors:
        return self

    def __exit__(self, _type: object, exc: BaseException | None, _traceback: object) -> None:
        if isinstance(exc, Exception) and not isinstance(exc, BackendError):
            raise self.translate(exc) from exc

    async def __aenter__(self) -> BackendErrors:
        return self

    async def __aexit__(self, _type: object, exc: BaseException | None, _tb: object) -> None:
        if not isinstance(exc, Exception):
            return
        error = exc if isinstance(exc, BackendError) else self.translate(exc)
        if error.status_code == 404:
            error = await self.client.api_check.explain(self.url, error)
        if error is not exc:
            raise error from exc

    def translate(self, exc: Exception) -> BackendError:
        """The `ui.errors` error for `exc`, by the first matching row of ERRORS."""
        for row in ERRORS:
            if not isinstance(exc, row.catches):
                continue
            if isinstance(row, _CauseOf):
                cause = exc.__cause__
                if isinstance(cause, Exception):
                    return self.translate(cause)
                continue
            if isinstance(row, _StatusOf):
                return self.status_error(*row.read(exc))
            if row.log:
                logger.warning(row.log, {"url": self.url, "exc": exc})
            return row.error(row.message.format(**self.facts(exc)))
        logger.exception("Unexpected error talking to %s", self.url, exc_info=exc)
        return BackendResponseError(f"Talking to the model backend failed ({type(exc).__name__}).")

    def facts(self, exc: Exception) -> dict[str, object]:
        """What a message in ERRORS may name."""
        return {
            # A TimeoutError in a call without a deadline of its own (a chat) came from
            # waiting for the backend: its read timeout is the bound that was hit.
            "deadline": self.deadline
            if self.deadline is not None
            else self.client.settings.read_timeout,
            "connect_timeout": self.client.settings.connect_timeout,
            "read_timeout": self.client.settings.read_timeout,
            "name": type(exc).__name__,
            "in_the_reply": " in the middle of the reply" if self.mid_stream else "",
        }

    def status_error(self, status: int, server_message: str) -> BackendError:
        """The error for an HTTP error answer (or -1 for an error inside a 200 stream)."""
        message = _shorten(server_message)
        if status == -1:  # ollama's marker for an {"error": ...} line inside a 200 stream
            return BackendResponseError(
                f"The model backend reported an error in the middle of the reply: {message}"
            )
        if status == 404 and self.model:
            return ModelNotFound(
                f"The model “{self.model}” is not available on the backend ({message}).",
                status_code=404,
            )
        if status == 404:  # a call about no model: the backend has no such address
            return BackendResponseError(
                f"The model backend answered “not found” (HTTP 404: {message}).",
                status_code=404,
            )
        if status in (429, 503):
            # A status comes before any reply text (Ollama writes nothing before the first
            # chunk, server/routes.go streamResponse), so the message was not processed and
            # may be sent again. 429 is Cloud Run with every instance busy; a 503 is Ollama's
            # full queue (sched.go ErrMaxQueue), a runner not ready, or Cloud Run.
            if OLLAMA_QUEUE_FULL in message:
                cause = "The model backend is busy right now: its request queue is full"
            elif status == 503:
                cause = "The model backend is busy right now or not ready"
            else:
                cause = "All model backends are busy right now"
            return BackendBusy(
                f"{cause} (HTTP {status}: {message}). Please try again in a moment.",
                status_code=status,
            )
        if status in (401, 403):
            # What to change (the backend's URL, IAM roles) is for operators: the log.
            logger.warning("%s", denied_message(status, self.client.audience_for(self.url)))
            return BackendAuthError(
                f"The model backend refused this app's credentials (HTTP {status}). This "
                "is a setup problem on the server: the details are in its log.",
                status_code=status,
            )
        return BackendResponseError(
            f"The model backend returned an error (HTTP {status}): {message}", status_code=status
        )


async def _finish_body(stream: AsyncIterator[Any]) -> None:
    """Read a finished reply's stream to the end of its body (Ollama ends it right after the
    final line). A response closed before its end also closes its connection, and the next
    request would pay a new TCP (and, to Cloud Run, TLS) handshake. Bounded: a body that
    does not end soon, or fails, only costs that connection; the reply is complete."""
    with contextlib.suppress(Exception):
        async with asyncio.timeout(BODY_END_GRACE_S):
            async for _ in stream:
                break


def _openai_message(exc: openai.APIStatusError) -> str:
    """The server's own words: openai keeps a JSON body's "error" object (or the whole
    body) in `exc.body`; FastAPI servers say `detail`."""
    body = exc.body
    if isinstance(body, dict):
        said = body.get("message") or body.get("detail")
        if isinstance(said, str):
            return said
    if isinstance(body, str):
        return body
    return exc.response.text


def _server_message(response: httpx.Response) -> str:
    try:
        body = response.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        return response.text
    if isinstance(body, dict) and isinstance(body.get("error"), str):
        return str(body["error"])
    return response.text


def _shorten(text: str, limit: int = 300) -> str:
    text = " ".join(str(text).split()) or "no details"
    return text if len(text) <= limit else text[: limit - 1] + "…"


# === which API a backend speaks ==========================================================
@dataclass(frozen=True)
class _Marker:
    """What answers only on a backend that speaks `api`: GET `path` gives JSON with `key`."""

    api: BackendApi
    path: str
    key: str


# Ollama also serves /v1 (its OpenAI compatibility): each API's own marker is asked first.
_MARKERS = (
    _Marker("ollama", OLLAMA_VERSION_PATH, "version"),
    _Marker("openai", MODELS_PATH, "data"),
)
_API_NAMES: dict[str, str] = {"ollama": "Ollama's API", "openai": "the OpenAI API"}


class ApiCheck:
    """Tells, after a 404, whether the backend speaks the other API than it is set up for
    (an OpenAI-compatible server behind LLM_BACKEND_API=ollama answers every call with
    404). Asks each backend once: its configured API's marker first (found: the 404 was
    genuine, e.g. an unknown model), then the other's."""

    def __init__(self, client: BackendClient) -> None:
        self.client = client
        self._speaks: dict[str, BackendApi] = {}  # backend URL -> the API it answered

    async def explain(self, url: str, error: BackendError) -> BackendError:
        """`error` (a 404 from `url`), or the misconfiguration it shows."""
        configured = self.client.apis[url]
        speaks = self._speaks.get(url)
        if speaks is None:
            speaks = await self._ask(url, configured)
            if speaks is not None:
                self._speaks[url] = speaks
        if speaks is None or speaks == configured:
            return error
        setting = self.setting_for(url, speaks)
        logger.warning(
            "The backend %s answers 404 to %s calls and speaks %s: %s",
            url, _API_NAMES[configured], _API_NAMES[speaks], setting,
        )  # fmt: skip
        return BackendMisconfigured(
            f"The model backend speaks {_API_NAMES[speaks]}, but this app is set up to "
            f"talk to it with {_API_NAMES[configured]}: {setting}",
            status_code=404,
        )

    async def _ask(self, url: str, configured: BackendApi) -> BackendApi | None:
        http = self.client.clients_for(url).http
        markers = sorted(_MARKERS, key=lambda marker: marker.api != configured)
        for marker in markers:
            try:
                async with asyncio.timeout(self.client.settings.probe_timeout):
                    response = await http.get(marker.path)
                body = response.json() if response.status_code == 200 else None
            except (httpx.HTTPError, TimeoutError, ValueError, BackendError):
                return None  # no clear answer: nothing to conclude
            if isinstance(body, dict) and marker.key in body:
                return marker.api
        return None

    def setting_for(self, url: str, speaks: BackendApi) -> str:
        """What to change, in the words of the settings (no URL: users may see it)."""
        families = [family for family, routed in self.client.routes.items() if routed == url]
        if not families:
            return f"set LLM_BACKEND_API={speaks}."
        entries = ", ".join(f"{family}={speaks}+URL" for family in families)
        return f"in LLM_BACKEND_ROUTES, write {entries}."
