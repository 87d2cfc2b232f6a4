"""The Ollama REST API over the local engine (what a chat UI uses of docs/api.md).

Streaming responses are NDJSON, one JSON object per line; `stream` absent means true.
Errors are `{"error": "..."}` with Ollama's status codes. As in Ollama (server/routes.go
streamResponse, v0.24.0) nothing is written before the first chunk, so a failure before the
first token is an HTTP status; only a failure after it is a final `{"error": ...}` line.
Responses are built from the `ollama` package's own pydantic types (the unexported ones via
backend/ollama_types.py), so the engine and the UI's client share one wire schema.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import ollama
from pydantic import BaseModel, ByteSize, ConfigDict, Field, ValidationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

from backend import model_files, prompts
from backend.engine import (
    Engine,
    EngineError,
    Generation,
    Options,
    Stats,
    parse_keep_alive,
)
from backend.ollama_types import ModelDetails, SubscriptableBaseModel
from catalog import ModelSpec

FIRST_PIECE_POLL_S = 0.25  # how often a request waiting for its first token checks its client
FIRST_PIECE_LOGGED_S = 15.0  # a first token this late is logged, with where the worker is
CLIENT_CLOSED = 499  # what Ollama answers a request whose client went away (routes.go)

log = logging.getLogger("backend.server")

VERSION = "0.12.0-local"  # the Ollama API level this engine follows, tagged as ours


# --- request bodies (strict types: a string where a number belongs is a 400) ---------------
class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")


class OptionsIn(_Strict):
    temperature: float | None = Field(default=None, ge=0)
    top_p: float | None = Field(default=None, ge=0, le=1)
    top_k: int | None = Field(default=None, ge=0)
    min_p: float | None = Field(default=None, ge=0, le=1)
    repeat_penalty: float | None = Field(default=None, ge=0)
    num_predict: int | None = None
    seed: int | None = None
    stop: list[str] | None = None
    num_ctx: int | None = Field(default=None, ge=64, le=32768)


class MessageIn(_Strict):
    role: str
    content: str = ""
    images: list[str] | None = None  # base64, as Ollama's api.Message.Images ([]ImageData)


def image_tags(messages: list[MessageIn]) -> list[prompts.Message] | str:
    """The messages as this engine's text-only models get them, or the error text of an
    image that is not base64. This follows Ollama v0.24.0 for a model without vision: its
    ChatHandler (server/routes.go) asks for the completion capability only, never
    `CapabilityVision`, so images are not refused; chatPrompt (server/prompt.go) puts an
    `[img-N]` tag before the text of each message per image (N counting over the whole
    conversation; a literal `[img]` in the text is replaced instead), and a model that is
    not a MultimodalProcessor tokenizes that tag as plain text and never reads the image
    (runner/ollamarunner/runner.go Server.inputs). Images that are not base64 fail JSON
    binding first: Go's encoding/json decodes []byte with base64.StdEncoding, and gin's
    ShouldBindJSON error (base64.CorruptInputError) is the 400's text."""
    out: list[prompts.Message] = []
    count = 0
    for message in messages:
        content, prefix = message.content, ""
        for image in message.images or []:
            bad = _corrupt_base64_at(image)
            if bad is not None:
                return f"illegal base64 data at input byte {bad}"
            tag = f"[img-{count}]"
            count += 1
            if "[img]" in content:
                content = content.replace("[img]", tag, 1)
            else:
                prefix += tag
        out.append(prompts.Message(message.role, prefix + content))
    return out


_BASE64 = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/")


def _corrupt_base64_at(text: str) -> int | None:
    """Where Go's base64.StdEncoding.Decode reports corrupt input (None: valid). Go skips
    \r and \n; its offset counts them too."""
    data = text.encode("utf-8", "surrogatepass")
    symbols = 0
    for index, byte in enumerate(data):
        if byte in b"\r\n":
            continue
        if byte == ord("="):
            # Padding: only at the end, completing a 4-symbol block.
            rest = data[index:].replace(b"\r", b"").replace(b"\n", b"")
            if symbols % 4 in (2, 3) and rest == b"=" * (4 - symbols % 4):
                return None
            return index
        if byte not in _BASE64:
            return index
        symbols += 1
    if symbols % 4 == 1:
        return len(data)
    if symbols % 4:
        return len(data)  # StdEncoding needs padding
    return None


class ChatIn(_Strict):
    model: str
    messages: list[MessageIn] | None = None
    stream: bool = True
    options: OptionsIn | None = None
    keep_alive: float | str | None = None
    truncate: bool | None = None


class GenerateIn(_Strict):
    model: str
    prompt: str | None = None
    system: str | None = None
    raw: bool = False
    stream: bool = True
    options: OptionsIn | None = None
    keep_alive: float | str | None = None
    truncate: bool | None = None


class ShowIn(_Strict):
    model: str | None = None
    name: str | None = None  # older clients send `name`


class BadRequest(Exception):
    pass


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat().replace("+00:00", "Z")


def _json(model: SubscriptableBaseModel) -> dict[str, Any]:
    """An ollama type as Ollama's JSON (its Go structs omit empty optional fields)."""
    return model.model_dump(mode="json", exclude_none=True, by_alias=True)


async def _parse(request: Request, cls: type[_Strict]) -> Any:
    try:
        body = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BadRequest(f"invalid JSON in request body: {exc}") from exc
    if not isinstance(body, dict):
        raise BadRequest("request body must be a JSON object")
    if not body.get("model") and cls is not ShowIn:
        raise BadRequest("model is required")
    try:
        return cls.model_validate(body)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"])
        raise BadRequest(f"invalid value for field '{where}': {err['msg']}") from exc


def _options(opts: OptionsIn | None, default_num_ctx: int, truncate: bool | None) -> Options:
    result = Options(num_ctx=default_num_ctx, truncate=truncate is not False)
    if opts is None:
        return result
    for name, value in opts.model_dump(exclude_none=True).items():
        setattr(result, name, value)
    if result.temperature == 0:
        result.top_k = 1  # greedy, so seed + temperature 0 is deterministic
    return result


def _details(spec: ModelSpec) -> ModelDetails:
    return ModelDetails(
        parent_model="",
        format="gguf",
        family=spec.reported_family,
        families=[spec.reported_family],
        parameter_size=spec.parameter_size,
        quantization_level=spec.quantization,
    )


def _modified_at(spec: ModelSpec) -> dt.datetime:
    return dt.datetime.fromtimestamp(model_files.gguf_path(spec.tag).stat().st_mtime, dt.UTC)


class _TagsModel(ollama.ListResponse.Model):
    name: str  # Ollama's /api/tags sends `name` beside `model` (the Python type omits it)


class _TagsResponse(ollama.ListResponse):
    models: list[_TagsModel]  # type: ignore[assignment]


def _tags_entry(spec: ModelSpec) -> _TagsModel:
    path = model_files.gguf_path(spec.tag)
    return _TagsModel(
        name=spec.tag,
        model=spec.tag,
        modified_at=_modified_at(spec),
        size=ByteSize(path.stat().st_size),
        digest=model_files.digest(spec.tag),
        details=_details(spec),
    )


def _expiry(expires_at: float | None, keep_alive: float) -> dt.datetime:
    """/api/ps expires_at: the model's expiry, or, before it has one (loading, or no request
    finished yet), now + keep_alive (routes.go PsHandler, v0.24.0: "if v.expiresAt == epoch")."""
    when = expires_at if expires_at is not None else time.time() + keep_alive
    return dt.datetime.fromtimestamp(when, dt.UTC)


def _ps_entry(
    spec: ModelSpec, size: int, expires: dt.datetime, context_length: int
) -> ollama.ProcessResponse.Model:
    return ollama.ProcessResponse.Model(
        name=spec.tag,
        model=spec.tag,
        size=ByteSize(size),
        size_vram=ByteSize(0),  # CPU only
        digest=model_files.digest(spec.tag),
        details=_details(spec),
        expires_at=expires,
        context_length=context_length,
    )


@dataclass(frozen=True)
class _Frames:
    """Builds one request's reply objects: /api/chat or /api/generate, with the final stats."""

    model: str
    t0: int  # perf_counter_ns at the handler's start: total_duration counts from it
    chat: bool

    def frame(self, text: str, done: bool, stats: Stats | None = None) -> dict[str, Any]:
        fields: dict[str, Any] = {"model": self.model, "created_at": _now(), "done": done}
        if stats is not None:
            fields.update(
                done_reason=stats.done_reason,
                total_duration=time.perf_counter_ns() - self.t0,
                load_duration=stats.load_duration,
                prompt_eval_count=stats.prompt_eval_count,
                prompt_eval_duration=stats.prompt_eval_duration,
                eval_count=stats.eval_count,
                eval_duration=stats.eval_duration,
            )
        if self.chat:
            message = ollama.Message(role="assistant", content=text)
            return _json(ollama.ChatResponse(message=message, **fields))
        context = stats.context if stats is not None else None
        return _json(ollama.GenerateResponse(response=text, context=context, **fields))


class _Handlers:
    """The HTTP routes over one engine: each method is a Starlette endpoint."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    @asynccontextmanager
    async def lifespan(self, app: Starlette) -> AsyncIterator[None]:
        self.engine.start()
        yield
        await self.engine.close()

    async def root(self, request: Request) -> Response:
        return PlainTextResponse("Ollama is running")

    async def version(self, request: Request) -> Response:
        return JSONResponse({"version": VERSION})

    async def tags(self, request: Request) -> Response:
        listing = _TagsResponse(models=[_tags_entry(s) for s in self.engine.available()])
        return JSONResponse(_json(listing))

    async def ps(self, request: Request) -> Response:
        engine = self.engine
        if engine.ps_while_loading == "wait":
            await engine.loads_finished()
        entries = [
            _ps_entry(
                m.spec,
                m.size,
                _expiry(m.expires_at, m.keep_alive),
                max(s.n_ctx for s in m.slots),
            )
            for m in list(engine.loaded.values())
        ]
        if engine.ps_while_loading == "list":
            entries += [
                _ps_entry(m.spec, m.size, _expiry(None, m.keep_alive), m.num_ctx)
                for m in list(engine.loading.values())
            ]
        # Longest time left first (routes.go PsHandler).
        entries.sort(key=lambda e: e.expires_at or dt.datetime.min, reverse=True)
        return JSONResponse(_json(ollama.ProcessResponse(models=entries)))

    async def show(self, request: Request) -> Response:
        try:
            body = await _parse(request, ShowIn)
        except BadRequest as exc:
            return _error(400, str(exc))
        name = body.model or body.name
        if not name:
            return _error(400, "model is required")
        try:
            spec = self.engine.resolve(name)
        except EngineError as exc:
            return _error(exc.status_code, str(exc))
        assert spec.prompt_format is not None
        kind = "chat-tuned" if spec.chat_tuned else "base model, not chat-tuned"
        shown = ollama.ShowResponse(
            license="See the model's upstream license.",
            modelfile=f"# {spec.display_name}: {kind}\n# {spec.description}\n"
            f"FROM {model_files.gguf_path(spec.tag)}\n",
            parameters="stop " + " ".join(prompts.STOP_STRINGS[spec.prompt_format]),
            template=prompts.template_text(spec.prompt_format),
            details=_details(spec),
            model_info={
                "general.architecture": spec.reported_family,
                "general.basename": spec.display_name,
                "general.description": spec.description,
                "general.chat_tuned": spec.chat_tuned,
            },
            # These GGUFs have no vision projector: what Ollama reports for a text-only
            # model (server/images.go Model.Capabilities, v0.24.0).
            capabilities=["completion"],
            modified_at=_modified_at(spec),
        )
        return JSONResponse(_json(shown))

    async def chat(self, request: Request) -> Response:
        t0 = time.perf_counter_ns()  # Ollama's checkpointStart: the handler's first act
        try:
            body: ChatIn = await _parse(request, ChatIn)
        except BadRequest as exc:
            return _error(400, str(exc))
        messages = image_tags(body.messages or [])
        if isinstance(messages, str):
            return _error(400, messages)
        bad_role = next(
            (m.role for m in messages if m.role not in ("system", "user", "assistant", "tool")),
            None,
        )
        if bad_role is not None:
            return _error(400, f"invalid role '{bad_role}' in messages")
        return await self._run(
            request, t0, body, messages=messages, raw=None, empty=not messages, chat=True
        )

    async def generate(self, request: Request) -> Response:
        t0 = time.perf_counter_ns()
        try:
            body: GenerateIn = await _parse(request, GenerateIn)
        except BadRequest as exc:
            return _error(400, str(exc))
        prompt = body.prompt or ""
        if body.raw:
            return await self._run(
                request, t0, body, messages=None, raw=prompt, empty=not prompt, chat=False
            )
        messages = ([prompts.Message("system", body.system)] if body.system else []) + [
            prompts.Message("user", prompt)
        ]
        return await self._run(
            request, t0, body, messages=messages, raw=None, empty=not prompt, chat=False
        )

    async def not_offered(self, request: Request) -> Response:
        action = request.url.path.rsplit("/", 1)[-1]
        return _error(
            405 if request.method != "POST" else 400,
            f"'{action}' is not supported: this local engine only serves its bundled models "
            f"({', '.join(s.tag for s in self.engine.available())})",
        )

    async def _run(
        self,
        request: Request,
        t0: int,
        body: ChatIn | GenerateIn,
        *,
        messages: list[prompts.Message] | None,
        raw: str | None,
        empty: bool,
        chat: bool,
    ) -> Response:
        """What /api/chat and /api/generate share once their bodies are checked."""
        engine = self.engine
        try:
            keep_alive = parse_keep_alive(body.keep_alive)
        except ValueError as exc:
            return _error(400, f"invalid value for field 'keep_alive': {exc}")
        try:
            spec = engine.resolve(body.model)
        except EngineError as exc:
            return _error(exc.status_code, str(exc))
        options = _options(body.options, engine.default_num_ctx, body.truncate)
        frames = _Frames(body.model, t0, chat)
        if empty:  # load or unload only (Ollama: no messages / empty prompt)
            return await self._load_or_unload(spec, keep_alive, frames)
        try:
            model, slot, load_ns = await engine.acquire(spec, options.num_ctx, keep_alive, t0)
        except EngineError as exc:
            return _error(exc.status_code, str(exc))
        stats = Stats(load_duration=load_ns)
        generation = engine.start_generation(
            model, slot, messages=messages, raw_prompt=raw, options=options, stats=stats
        )
        if not body.stream:
            return await _whole_reply(generation, frames, stats)
        return await _streamed_reply(request, generation, frames, stats)

    async def _load_or_unload(
        self, spec: ModelSpec, keep_alive: float | None, frames: _Frames
    ) -> Response:
        if keep_alive == 0:
            await self.engine.unload(frames.model)
            reason = "unload"
        else:
            try:
                model = await self.engine.ensure_loaded(spec, keep_alive)
            except EngineError as exc:
                return _error(exc.status_code, str(exc))
            # The load request finished on the model: it counts as idle from now.
            self.engine.went_idle(model)
            reason = "load"
        return JSONResponse({**frames.frame("", True), "done_reason": reason})


async def _whole_reply(generation: Generation, frames: _Frames, stats: Stats) -> Response:
    """`stream: false`: one JSON object once the generation is over."""
    pieces = generation.pieces()
    try:
        text = "".join([p async for p in pieces])
    except EngineError as exc:
        return _error(exc.status_code, str(exc))
    finally:
        await pieces.aclose()
        generation.close()
    return JSONResponse(frames.frame(text, True, stats))


async def _streamed_reply(
    request: Request, generation: Generation, frames: _Frames, stats: Stats
) -> Response:
    pieces = generation.pieces()
    # Nothing is sent before the first piece: a failure until then is an HTTP status.
    try:
        first = await _first_piece(request, pieces, generation.describe)
    except EngineError as exc:
        await pieces.aclose()
        generation.close()
        return _error(exc.status_code, str(exc))
    except _ClientGone:
        await pieces.aclose()
        generation.close()
        return _error(CLIENT_CLOSED, "request canceled")

    async def body_stream() -> AsyncIterator[bytes]:
        try:
            if first is not None:
                yield _line(frames.frame(first, False))
                async for piece in pieces:
                    yield _line(frames.frame(piece, False))
            yield _line(frames.frame("", True, stats))
        except EngineError as exc:
            yield _line({"error": str(exc)})

    return _StreamWithCleanup(body_stream(), generation.close)


# What Ollama serves but this engine does not: a clear error instead of a 404.
_NOT_OFFERED = ("pull", "push", "create", "delete", "copy", "blobs/{digest}", "embed", "embeddings")


# Ollama's server closes no idle connection (server/routes.go, Serve: an http.Server without
# IdleTimeout). uvicorn's default closes one after 5 s, the same as httpx's keep-alive expiry
# on the UI's side: a request sent on a connection the engine was closing at that instant
# broke off without an answer. A client's keep-alive must end before the server's: hold
# idle connections longer than any client here keeps them (the Google front end: 610 s).
IDLE_CONNECTION_S = 620


def build_app(engine: Engine) -> Starlette:
    handlers = _Handlers(engine)
    routes = [
        Route("/", handlers.root, methods=["GET", "HEAD"]),
        Route("/api/version", handlers.version, methods=["GET"]),
        Route("/api/tags", handlers.tags, methods=["GET"]),
        Route("/api/ps", handlers.ps, methods=["GET"]),
        Route("/api/show", handlers.show, methods=["POST"]),
        Route("/api/chat", handlers.chat, methods=["POST"]),
        Route("/api/generate", handlers.generate, methods=["POST"]),
    ] + [
        Route(f"/api/{name}", handlers.not_offered, methods=["GET", "POST", "DELETE", "HEAD"])
        for name in _NOT_OFFERED
    ]
    return Starlette(routes=routes, lifespan=handlers.lifespan)


class _ClientGone(Exception):
    pass


async def _first_piece(
    request: Request, pieces: AsyncIterator[str], describe: Callable[[], str]
) -> str | None:
    """The first piece of text (None if the reply is empty), watching meanwhile whether the
    client went away (then the generation stops during its prefill). A late first piece
    is logged once, with `describe()` (where the generation is)."""
    task = asyncio.ensure_future(anext(pieces))
    late_at = time.monotonic() + FIRST_PIECE_LOGGED_S
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=FIRST_PIECE_POLL_S)
            if done:
                break
            if late_at and time.monotonic() >= late_at:
                late_at = 0.0
                log.warning("no first token after %.0f s: %s", FIRST_PIECE_LOGGED_S, describe())
            if await request.is_disconnected():
                raise _ClientGone()
    finally:
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, StopAsyncIteration, EngineError):
                await task
    try:
        return task.result()
    except StopAsyncIteration:
        return None


class _StreamWithCleanup(StreamingResponse):
    """NDJSON stream whose cleanup runs however the response ends (even never started)."""

    def __init__(self, content: AsyncIterator[bytes], cleanup: Callable[[], None]) -> None:
        super().__init__(content, media_type="application/x-ndjson")
        self._cleanup = cleanup

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            # Runs on client disconnect too: stops generation, frees the slot.
            self._cleanup()


def _line(obj: dict[str, Any]) -> bytes:
    return (json.dumps(obj, ensure_ascii=False, separators=(",", ":")) + "\n").encode()
