"""A fast synthetic backend speaking Ollama's HTTP API, for load benchmarks of the UI.

It generates nothing: each /api/chat stream sends its first token `first_token_delay`
seconds after the request arrived, then one token every 1/`rate` seconds on a fixed
schedule (no drift), `num_predict` tokens in all (or `--tokens` when the request has
none), then Ollama's final line with stats. A Starlette app under uvicorn (as the local
engine, backend/server.py); requests are read and answers written with the `ollama`
package's own pydantic types (ChatRequest, ChatResponse, Message, ListResponse,
ProcessResponse), so this server and the client that reads it share one wire schema. The
token line is serialized once, so one process keeps up with hundreds of streams and the UI
in front of it is what is measured.

    python -m bench.synthetic_ollama --port 11500 --rate 50 --first-token-delay 0.02

    GET  /                  "Ollama is running"
    GET  /api/version       {"version": "0.0.0-synthetic"}
    GET  /api/tags, /api/ps one model, MODEL, always "loaded"
    POST /api/chat          the stream (stream=false: one JSON answer)
    GET  /_synthetic/stats  streams served, and how late token writes were (the server's
                            own health: the numbers mean something only if it kept up)
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from ollama import ChatResponse, ListResponse, Message, ProcessResponse
from pydantic import ByteSize, ValidationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

from backend.ollama_types import ChatRequest, ModelDetails  # not exported by ollama

MODEL = "synthetic:1m"
TOKEN_TEXT = "word "  # ~ one token of English text
MAX_BODY = 64 * 1024 * 1024
CREATED_AT = "2026-01-01T00:00:00Z"
SIZE = ByteSize(1_000_000)
DETAILS = ModelDetails(family="synthetic", parameter_size="1M", quantization_level="F16")
NDJSON = "application/x-ndjson"


@dataclass
class SyntheticConfig:
    rate: float = 50.0  # tokens per second per stream
    first_token_delay: float = 0.02  # seconds from request to first token
    default_tokens: int = 100  # reply length when the request sets no num_predict


@dataclass
class Stats:
    streams: int = 0
    clients: set[tuple[str, int]] = field(default_factory=set)  # one per TCP connection
    active: int = 0
    peak_active: int = 0
    tokens: int = 0
    lateness: list[float] = field(default_factory=list)  # s behind schedule, sampled writes

    def snapshot(self) -> dict[str, Any]:
        late = sorted(self.lateness)

        def p(q: float) -> float:
            return late[min(len(late) - 1, int(q * len(late)))] if late else 0.0

        return {
            "streams": self.streams,
            "connections": len(self.clients),  # clients that reuse connections open few
            "active": self.active,
            "peak_active": self.peak_active,
            "tokens": self.tokens,
            "late_p50_ms": round(p(0.5) * 1000, 2),
            "late_p99_ms": round(p(0.99) * 1000, 2),
            "late_max_ms": round((late[-1] if late else 0.0) * 1000, 2),
        }


def _json(model: Any, status: int = 200) -> Response:
    """An answer in the `ollama` package's schema (None fields left out, as Ollama does)."""
    return Response(model.model_dump_json(exclude_none=True), status, media_type="application/json")


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)  # Ollama's error shape


class SyntheticOllama:
    def __init__(self, config: SyntheticConfig) -> None:
        self.config = config
        self.stats = Stats()
        # Every token line is the same: serialized once, not once per write.
        token = ChatResponse(
            model=MODEL,
            created_at=CREATED_AT,
            message=Message(role="assistant", content=TOKEN_TEXT),
            done=False,
        )
        self._token_line = (token.model_dump_json(exclude_none=True) + "\n").encode()

    def app(self) -> Starlette:
        return Starlette(
            routes=[
                Route("/", self.root, methods=["GET", "HEAD"]),
                Route("/api/version", self.version, methods=["GET"]),
                Route("/api/tags", self.tags, methods=["GET"]),
                Route("/api/ps", self.ps, methods=["GET"]),
                Route("/api/chat", self.chat, methods=["POST"]),
                Route("/_synthetic/stats", self.stats_page, methods=["GET"]),
            ]
        )

    # --- routes ---------------------------------------------------------------------------
    async def root(self, request: Request) -> Response:
        self._seen(request)
        return PlainTextResponse("Ollama is running")

    async def version(self, request: Request) -> Response:
        self._seen(request)
        return JSONResponse({"version": "0.0.0-synthetic"})  # the ollama package has no type

    async def tags(self, request: Request) -> Response:
        self._seen(request)
        entry = ListResponse.Model(model=MODEL, size=SIZE, details=DETAILS)
        return _json(ListResponse(models=[entry]))

    async def ps(self, request: Request) -> Response:
        self._seen(request)
        entry = ProcessResponse.Model(
            model=MODEL, name=MODEL, size=SIZE, size_vram=ByteSize(0), details=DETAILS
        )
        return _json(ProcessResponse(models=[entry]))

    async def stats_page(self, request: Request) -> Response:
        return JSONResponse(self.stats.snapshot())

    async def chat(self, request: Request) -> Response:
        self._seen(request)
        if int(request.headers.get("content-length") or 0) > MAX_BODY:
            return _error(413, "request too large")
        body = await request.body()
        arrived = time.perf_counter()
        try:
            chat = ChatRequest.model_validate_json(body or b"{}")
        except ValidationError as exc:
            return _error(400, f"invalid chat request: {exc.error_count()} problem(s)")
        if chat.model != MODEL:
            return _error(404, f"model '{chat.model}' not found")
        options = chat.options or {}
        tokens = int(options.get("num_predict") or 0)
        tokens = tokens if tokens > 0 else self.config.default_tokens
        if not chat.messages:  # a load request: answer at once
            return _json(self._final(0, arrived, "load"))
        if chat.stream is False:
            await asyncio.sleep(self.config.first_token_delay + tokens / self.config.rate)
            answer = self._final(tokens, arrived, "length")
            answer.message.content = TOKEN_TEXT * tokens
            return _json(answer)
        return StreamingResponse(self._stream(tokens, arrived), media_type=NDJSON)

    # --- the stream -----------------------------------------------------------------------
    async def _stream(self, tokens: int, arrived: float) -> AsyncIterator[bytes]:
        stats = self.stats
        stats.streams += 1
        stats.active += 1
        stats.peak_active = max(stats.peak_active, stats.active)
        try:
            first_at = arrived + self.config.first_token_delay
            interval = 1.0 / self.config.rate
            for i in range(tokens):
                due = first_at + i * interval
                wait = due - time.perf_counter()
                if wait > 0:
                    await asyncio.sleep(wait)
                if i % 8 == 0:  # sample: enough for percentiles, bounded memory
                    stats.lateness.append(max(0.0, time.perf_counter() - due))
                yield self._token_line  # uvicorn waits here while the client is behind
                stats.tokens += 1
            final = self._final(tokens, arrived, "length")
            yield (final.model_dump_json(exclude_none=True) + "\n").encode()
        finally:
            stats.active -= 1

    def _final(self, tokens: int, arrived: float, reason: str) -> ChatResponse:
        return ChatResponse(
            model=MODEL,
            created_at=CREATED_AT,
            message=Message(role="assistant", content=""),
            done=True,
            done_reason=reason,
            total_duration=int((time.perf_counter() - arrived) * 1e9),
            load_duration=1000,
            prompt_eval_count=10,
            prompt_eval_duration=1000,
            eval_count=tokens,
            eval_duration=max(1, int(tokens / self.config.rate * 1e9)),
        )

    def _seen(self, request: Request) -> None:
        if request.client is not None:
            self.stats.clients.add((request.client.host, request.client.port))


def serve(host: str, port: int, config: SyntheticConfig) -> None:
    server = uvicorn.Server(
        uvicorn.Config(
            SyntheticOllama(config).app(),
            host=host,
            port=port,
            log_level="warning",
            access_log=False,
            lifespan="off",
            backlog=1024,
            timeout_graceful_shutdown=2,
        )
    )
    print(f"synthetic Ollama on http://{host}:{port} (pid {os.getpid()})", flush=True)
    server.run()  # stops on SIGTERM / SIGINT


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--rate", type=float, default=50.0, help="tokens/s per stream")
    parser.add_argument("--first-token-delay", type=float, default=0.02, help="seconds")
    parser.add_argument("--tokens", type=int, default=100, help="reply length if unset")
    args = parser.parse_args()
    if args.rate <= 0 or args.first_token_delay < 0 or args.tokens < 1:
        parser.error("--rate must be > 0, --first-token-delay >= 0, --tokens >= 1")
    serve(args.host, args.port, SyntheticConfig(args.rate, args.first_token_delay, args.tokens))


if __name__ == "__main__":
    main()
