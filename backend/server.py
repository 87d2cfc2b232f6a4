"""The Ollama REST API over the local engine (what a chat UI uses of docs/api.md).

Streaming responses are NDJSON, one JSON object per line; `stream` absent means true.
Errors are `{"error": "..."}` with Ollama's status codes; an error after streaming started
is sent as a final `{"error": ...}` line.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

from backend import model_files, prompts
from backend.engine import (
    Engine,
    EngineError,
    Options,
    Stats,
    parse_keep_alive,
)
from catalog import ModelSpec

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


class ChatIn(_Strict):
    model: str
    messages: list[MessageIn] | None = None
    stream: bool = True
    options: OptionsIn | None = None
    keep_alive: float | str | None = None


class GenerateIn(_Strict):
    model: str
    prompt: str | None = None
    system: str | None = None
    raw: bool = False
    stream: bool = True
    options: OptionsIn | None = None
    keep_alive: float | str | None = None


class ShowIn(_Strict):
    model: str | None = None
    name: str | None = None  # older clients send `name`


class BadRequest(Exception):
    pass


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat().replace("+00:00", "Z")


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


def _options(opts: OptionsIn | None) -> Options:
    result = Options()
    if opts is None:
        return result
    for name, value in opts.model_dump(exclude_none=True).items():
        setattr(result, name, value)
    if result.temperature == 0:
        result.top_k = 1  # greedy, so seed + temperature 0 is deterministic
    return result


def _details(spec: ModelSpec) -> dict[str, Any]:
    return {
        "parent_model": "",
        "format": "gguf",
        "family": spec.family,
        "families": [spec.family],
        "parameter_size": spec.parameter_size,
        "quantization_level": spec.quantization,
    }


def _model_entry(spec: ModelSpec) -> dict[str, Any]:
    path = model_files.gguf_path(spec.tag)
    modified = dt.datetime.fromtimestamp(path.stat().st_mtime, dt.UTC)
    return {
        "name": spec.tag,
        "model": spec.tag,
        "modified_at": modified.isoformat().replace("+00:00", "Z"),
        "size": path.stat().st_size,
        "digest": model_files.digest(spec.tag),
        "details": _details(spec),
    }


def _done_fields(stats: Stats, total_ns: int) -> dict[str, Any]:
    return {
        "done_reason": stats.done_reason,
        "total_duration": total_ns,
        "load_duration": stats.load_duration,
        "prompt_eval_count": stats.prompt_eval_count,
        "prompt_eval_duration": stats.prompt_eval_duration,
        "eval_count": stats.eval_count,
        "eval_duration": stats.eval_duration,
    }


def build_app(engine: Engine) -> Starlette:
    async def root(request: Request) -> Response:
        return PlainTextResponse("Ollama is running")

    async def version(request: Request) -> Response:
        return JSONResponse({"version": VERSION})

    async def tags(request: Request) -> Response:
        return JSONResponse({"models": [_model_entry(s) for s in engine.available()]})

    async def ps(request: Request) -> Response:
        models = []
        for tag, loaded in engine.loaded.items():
            entry = _model_entry(loaded.spec)
            expires = (
                dt.datetime.fromtimestamp(loaded.expires_at, dt.UTC)
                if loaded.expires_at is not None
                else dt.datetime(2318, 1, 1, tzinfo=dt.UTC)  # Ollama's "forever"
            )
            entry.pop("modified_at")
            entry.update(
                expires_at=expires.isoformat().replace("+00:00", "Z"),
                size_vram=0,  # CPU only
                context_length=max(s.n_ctx for s in loaded.slots),
            )
            models.append(entry)
            del tag
        return JSONResponse({"models": models})

    async def show(request: Request) -> Response:
        try:
            body = await _parse(request, ShowIn)
        except BadRequest as exc:
            return _error(400, str(exc))
        name = body.model or body.name
        if not name:
            return _error(400, "model is required")
        try:
            spec = engine.resolve(name)
        except EngineError as exc:
            return _error(exc.status_code, str(exc))
        assert spec.prompt_format is not None
        kind = "chat-tuned" if spec.chat_tuned else "base model, not chat-tuned"
        return JSONResponse(
            {
                "license": "See the model's upstream license.",
                "modelfile": f"# {spec.display_name}: {kind}\n# {spec.description}\n"
                f"FROM {model_files.gguf_path(spec.tag)}\n",
                "parameters": "stop " + " ".join(prompts.STOP_STRINGS[spec.prompt_format]),
                "template": prompts.template_text(spec.prompt_format),
                "details": _details(spec),
                "model_info": {
                    "general.architecture": "gemma3" if spec.family == "gemma" else "llama",
                    "general.basename": spec.display_name,
                    "general.description": spec.description,
                    "general.chat_tuned": spec.chat_tuned,
                },
                "capabilities": ["completion"],
                "modified_at": _model_entry(spec)["modified_at"],
            }
        )

    async def chat(request: Request) -> Response:
        try:
            body: ChatIn = await _parse(request, ChatIn)
        except BadRequest as exc:
            return _error(400, str(exc))
        messages = [prompts.Message(m.role, m.content) for m in body.messages or []]
        bad_role = next(
            (m.role for m in messages if m.role not in ("system", "user", "assistant", "tool")),
            None,
        )
        if bad_role is not None:
            return _error(400, f"invalid role '{bad_role}' in messages")
        return await _run(
            request,
            body.model,
            body.stream,
            body.options,
            body.keep_alive,
            messages=messages,
            raw=None,
            empty=not messages,
            chat=True,
        )

    async def generate(request: Request) -> Response:
        try:
            body: GenerateIn = await _parse(request, GenerateIn)
        except BadRequest as exc:
            return _error(400, str(exc))
        prompt = body.prompt or ""
        if body.raw:
            return await _run(
                request,
                body.model,
                body.stream,
                body.options,
                body.keep_alive,
                messages=None,
                raw=prompt,
                empty=not prompt,
                chat=False,
            )
        messages = ([prompts.Message("system", body.system)] if body.system else []) + [
            prompts.Message("user", prompt)
        ]
        return await _run(
            request,
            body.model,
            body.stream,
            body.options,
            body.keep_alive,
            messages=messages,
            raw=None,
            empty=not prompt,
            chat=False,
        )

    async def _run(
        request: Request,
        name: str,
        stream: bool,
        options_in: OptionsIn | None,
        keep_alive_in: float | str | None,
        *,
        messages: list[prompts.Message] | None,
        raw: str | None,
        empty: bool,
        chat: bool,
    ) -> Response:
        t0 = time.perf_counter_ns()
        try:
            keep_alive = parse_keep_alive(keep_alive_in)
        except ValueError as exc:
            return _error(400, str(exc))
        try:
            spec = engine.resolve(name)
        except EngineError as exc:
            return _error(exc.status_code, str(exc))
        options = _options(options_in)

        def frame(text: str, done: bool) -> dict[str, Any]:
            base: dict[str, Any] = {"model": name, "created_at": _now()}
            if chat:
                base["message"] = {"role": "assistant", "content": text}
            else:
                base["response"] = text
            base["done"] = done
            return base

        if empty:  # load or unload only (Ollama: no messages / empty prompt)
            if keep_alive == 0:
                await engine.unload(name)
                reason = "unload"
            else:
                try:
                    model, _ = await engine.ensure_loaded(spec)
                except EngineError as exc:
                    return _error(exc.status_code, str(exc))
                engine.set_keep_alive(model, keep_alive)
                reason = "load"
            return JSONResponse({**frame("", True), "done_reason": reason})

        try:
            model, slot, load_ns = await engine.acquire(spec, options.num_ctx)
        except EngineError as exc:
            return _error(exc.status_code, str(exc))
        model.keep_alive = engine.default_keep_alive if keep_alive is None else keep_alive
        stats = Stats(load_duration=load_ns)
        generation = engine.start_generation(
            model, slot, messages=messages, raw_prompt=raw, options=options, stats=stats
        )
        pieces = generation.pieces()

        def final() -> dict[str, Any]:
            out = {**frame("", True), **_done_fields(stats, time.perf_counter_ns() - t0)}
            if not chat:
                out["context"] = stats.context
            return out

        if not stream:
            try:
                text = "".join([p async for p in pieces])
            except EngineError as exc:
                return _error(500, str(exc))
            finally:
                await pieces.aclose()
                generation.close()
            out = final()
            if chat:
                out["message"]["content"] = text
            else:
                out["response"] = text
            return JSONResponse(out)

        async def body_stream() -> AsyncIterator[bytes]:
            try:
                async for piece in pieces:
                    yield _line(frame(piece, False))
                yield _line(final())
            except EngineError as exc:
                yield _line({"error": str(exc)})

        return _StreamWithCleanup(body_stream(), generation.close)

    async def not_offered(request: Request) -> Response:
        action = request.url.path.rsplit("/", 1)[-1]
        return _error(
            405 if request.method != "POST" else 400,
            f"'{action}' is not supported: this local engine only serves its bundled models "
            f"({', '.join(s.tag for s in engine.available())})",
        )

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        engine.start()
        yield
        await engine.close()

    routes = [
        Route("/", root, methods=["GET", "HEAD"]),
        Route("/api/version", version, methods=["GET"]),
        Route("/api/tags", tags, methods=["GET"]),
        Route("/api/ps", ps, methods=["GET"]),
        Route("/api/show", show, methods=["POST"]),
        Route("/api/chat", chat, methods=["POST"]),
        Route("/api/generate", generate, methods=["POST"]),
    ] + [
        Route(f"/api/{name}", not_offered, methods=["GET", "POST", "DELETE", "HEAD"])
        for name in (
            "pull",
            "push",
            "create",
            "delete",
            "copy",
            "blobs/{digest}",
            "embed",
            "embeddings",
        )
    ]
    return Starlette(routes=routes, lifespan=lifespan)


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
