"""The one boundary between the UI and the model backends (Ollama's HTTP API).

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
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import weakref
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Mapping, Sequence
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any, NamedTuple, TypedDict, cast

import httpx
import ollama
import pydantic

from catalog import Family, family_of
from ui.backend_access.auth import auth_for, denied_message, root_url
from ui.errors import (
    BackendAuthError,
    BackendBusy,
    BackendError,
    BackendResponseError,
    BackendTimeout,
    BackendUnreachable,
    ModelNotFound,
)
from ui.settings import DEFAULT_LOCAL_BACKEND, Settings

logger = logging.getLogger(__name__)

NS_PER_S = 1_000_000_000
# A load_duration above this means the request waited for a model to load. Ollama measures it
# from request start to the model being ready (server/routes.go ChatHandler, v0.24.0): only
# scheduling when the model is loaded, the whole load (seconds on a GPU) otherwise. Measured
# with the real engine (`python -m bench.load_duration`, 2026-12-07, 2 cores): a loaded model
# 0.10-0.49 ms quiet, at most 4.3 ms with another process keeping a core busy; a real load
# 117-392 ms for smollm2:135m (91 ms seen once on a quiet machine), 413-1687 ms for
# gemma3:270m. 20 ms sits 4x above the slowest warm value and 4x below the fastest load.
MODEL_LOAD_MIN_S = 0.020


def was_a_model_load(load_seconds: float | None) -> bool:
    """Whether a reply with this load_duration (in seconds) waited for its model to load."""
    return load_seconds is not None and load_seconds > MODEL_LOAD_MIN_S


# Ollama's 503 when OLLAMA_MAX_QUEUE requests already wait (server/sched.go ErrMaxQueue).
OLLAMA_QUEUE_FULL = "maximum pending requests exceeded"
BODY_END_GRACE_S = 1.0  # how long a finished reply's body may take to end


# === typed results =======================================================================
@dataclass(frozen=True)
class TokenDelta:
    """A piece of reply text, in stream order."""

    text: str


@dataclass(frozen=True)
class ReplyStats:
    """Ollama's numbers from the final stream line (durations in nanoseconds)."""

    eval_count: int | None = None
    eval_duration: int | None = None
    load_duration: int | None = None
    prompt_eval_count: int | None = None
    prompt_eval_duration: int | None = None
    total_duration: int | None = None
    done_reason: str | None = None

    @property
    def tokens_per_second(self) -> float | None:
        if not self.eval_count or not self.eval_duration:
            return None
        return self.eval_count / (self.eval_duration / NS_PER_S)

    @property
    def load_seconds(self) -> float | None:
        return None if self.load_duration is None else self.load_duration / NS_PER_S

    @property
    def model_was_loaded(self) -> bool:
        """Whether this reply waited for its model to load (see MODEL_LOAD_MIN_S)."""
        return was_a_model_load(self.load_seconds)

    @property
    def total_seconds(self) -> float | None:
        return None if self.total_duration is None else self.total_duration / NS_PER_S

    @classmethod
    def from_response(cls, part: ollama.ChatResponse) -> ReplyStats:
        return cls(
            eval_count=part.eval_count,
            eval_duration=part.eval_duration,
            load_duration=part.load_duration,
            prompt_eval_count=part.prompt_eval_count,
            prompt_eval_duration=part.prompt_eval_duration,
            total_duration=part.total_duration,
            done_reason=part.done_reason,
        )


@dataclass(frozen=True)
class ReplyDone:
    """The last event of a reply."""

    stats: ReplyStats


ChatEvent = TokenDelta | ReplyDone


@dataclass(frozen=True)
class ModelInfo:
    """One model a backend offers (from /api/tags)."""

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

    ollama: ollama.AsyncClient  # chat, load, /api/tags, /api/ps
    # For what the ollama client has no call for: GET /api/version (the probe).
    http: httpx.AsyncClient

    async def aclose(self) -> None:
        await self.ollama.close()
        await self.http.aclose()


class BackendClient:
    """Talks to one default backend plus optional per-family backends."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.default_url = (settings.backend_url or DEFAULT_LOCAL_BACKEND).rstrip("/")
        self.routes: dict[str, str] = {
            family.lower(): url.rstrip("/") for family, url in settings.backend_routes.items()
        }
        self.timeout = httpx.Timeout(
            connect=settings.connect_timeout,
            read=settings.read_timeout,
            write=max(settings.connect_timeout, 10.0),
            pool=settings.connect_timeout,
        )
        # Each running stream holds one connection; leave room above the concurrency limit
        # for model lists and /api/ps (probes have a client of their own).
        self.limits = httpx.Limits(
            max_connections=settings.concurrency_limit + 20, max_keepalive_connections=20
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
            clients = per_loop[url] = BackendClients(
                ollama=ollama.AsyncClient(host=url, **options),
                http=httpx.AsyncClient(
                    base_url=url, headers={"Accept": "application/json"}, **options
                ),
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
        client = self.clients_for(url).ollama
        with BackendErrors(self, url, model=model) as call:
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
        with BackendErrors(self, url, model=model):
            response = await self.clients_for(url).ollama.chat(
                model=model, messages=[], keep_alive=keep_alive, stream=False
            )
        return ReplyStats.from_response(response)

    async def capabilities(self, model: str, *, deadline: float | None = None) -> list[str]:
        """What `model` can do, as its backend's /api/show says (`capabilities`, e.g.
        "completion", "vision"); [] when the backend does not say (older Ollama)."""
        url = self.url_for(model)
        with BackendErrors(self, url, model=model, deadline=deadline):
            async with asyncio.timeout(deadline):
                response = await self.clients_for(url).ollama.show(model)
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
        with BackendErrors(self, url, deadline=deadline):
            async with asyncio.timeout(deadline):
                response = await self.clients_for(url).ollama.list()
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
        """Models loaded right now, over all backends (from /api/ps)."""
        running: list[RunningModel] = []
        for url in self.backend_urls:
            with BackendErrors(self, url):
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
        GET /api/version within `settings.probe_timeout`. Returns the version string.
        A warm Ollama answers in milliseconds; a scaled-to-zero one does not."""
        url = self.url_for(model) if model else self.default_url
        deadline = self.settings.probe_timeout
        with BackendErrors(self, url, deadline=deadline):
            async with asyncio.timeout(deadline):
                # The ollama client has no version call (ollama 0.6); `http` is built with
                # the same auth, timeouts and redirects.
                response = await self.clients_for(url).http.get("/api/version")
                response.raise_for_status()
                version = response.json().get("version")
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


ERRORS: tuple[_Becomes | _StatusOf, ...] = (
    _StatusOf(ollama.ResponseError, lambda exc: (exc.status_code, str(exc.error))),
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
    _Becomes(httpx.HTTPError, BackendUnreachable, "Talking to the model backend failed ({name})."),
)


@dataclass
class BackendErrors:
    """`with BackendErrors(client, url, ...) as call:` turns any failure in the block into a
    `ui.errors` error, raised from the original. The first row of ERRORS that matches wins,
    so a subclass comes before its base::

        Exception                       becomes
        ├── ui.errors.BackendError      itself (ours already, also from ui.backend_access.auth)
        ├── ollama.ResponseError        by its status; -1: an error line inside a 200 stream
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

    def __enter__(self) -> BackendErrors:
        return self

    def __exit__(self, _type: object, exc: BaseException | None, _traceback: object) -> None:
        if isinstance(exc, Exception) and not isinstance(exc, BackendError):
            raise self.translate(exc) from exc

    def translate(self, exc: Exception) -> BackendError:
        """The `ui.errors` error for `exc`, by the first matching row of ERRORS."""
        for row in ERRORS:
            if not isinstance(exc, row.catches):
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
        """The error for an HTTP error answer (or ollama's -1 for an error line)."""
        message = _shorten(server_message)
        if status == -1:  # ollama's marker for an {"error": ...} line inside a 200 stream
            return BackendResponseError(
                f"The model backend reported an error in the middle of the reply: {message}"
            )
        if status == 404:
            name = f"“{self.model}”" if self.model else "That model"
            return ModelNotFound(
                f"The model {name} is not available on the backend ({message}).", status_code=404
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
