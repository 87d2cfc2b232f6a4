"""A fast synthetic backend speaking Ollama's HTTP API, for load benchmarks of the UI.

It generates nothing: each /api/chat stream sends its first token `first_token_delay`
seconds after the request arrived, then one token every 1/`rate` seconds on a fixed
schedule (no drift), `num_predict` tokens in all (or `--tokens` when the request has
none), then Ollama's final line with stats. Plain asyncio streams, no framework, so one
process keeps up with hundreds of streams and the UI in front of it is what is measured.

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
import contextlib
import json
import os
import signal
import time
from dataclasses import dataclass, field
from typing import Any

MODEL = "synthetic:1m"
TOKEN_TEXT = "word "  # ~ one token of English text
MAX_BODY = 64 * 1024 * 1024


@dataclass
class SyntheticConfig:
    rate: float = 50.0  # tokens per second per stream
    first_token_delay: float = 0.02  # seconds from request to first token
    default_tokens: int = 100  # reply length when the request sets no num_predict


@dataclass
class Stats:
    streams: int = 0
    connections: int = 0  # TCP connections accepted (clients that reuse them open few)
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
            "connections": self.connections,
            "active": self.active,
            "peak_active": self.peak_active,
            "tokens": self.tokens,
            "late_p50_ms": round(p(0.5) * 1000, 2),
            "late_p99_ms": round(p(0.99) * 1000, 2),
            "late_max_ms": round((late[-1] if late else 0.0) * 1000, 2),
        }


class SyntheticOllama:
    def __init__(self, config: SyntheticConfig) -> None:
        self.config = config
        self.stats = Stats()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.stats.connections += 1
        try:
            while True:  # keep-alive: many requests per connection
                request_line = await reader.readline()
                if not request_line:
                    return
                method, path, _ = request_line.decode("latin-1").split(" ", 2)
                headers: dict[str, str] = {}
                while True:
                    line = await reader.readline()
                    if line in (b"\r\n", b"\n", b""):
                        break
                    name, _, value = line.decode("latin-1").partition(":")
                    headers[name.strip().lower()] = value.strip()
                length = int(headers.get("content-length") or 0)
                if length > MAX_BODY:
                    await self._json(writer, 413, {"error": "request too large"})
                    return
                body = await reader.readexactly(length) if length else b""
                arrived = time.perf_counter()
                keep = await self.route(method, path.split("?", 1)[0], body, arrived, writer)
                if not keep or headers.get("connection", "").lower() == "close":
                    return
        except (ConnectionError, asyncio.IncompleteReadError, ValueError):
            return
        finally:
            with contextlib.suppress(Exception):
                writer.close()

    async def route(
        self, method: str, path: str, body: bytes, arrived: float, writer: asyncio.StreamWriter
    ) -> bool:
        """Answer one request; False closes the connection."""
        if method == "GET" and path == "/":
            await self._send(writer, 200, b"Ollama is running", "text/plain; charset=utf-8")
        elif method == "GET" and path == "/api/version":
            await self._json(writer, 200, {"version": "0.0.0-synthetic"})
        elif method == "GET" and path in ("/api/tags", "/api/ps"):
            model = {"name": MODEL, "model": MODEL, "size": 1_000_000, "size_vram": 0,
                     "details": {"family": "synthetic", "parameter_size": "1M",
                                 "quantization_level": "F16"}}  # fmt: skip
            await self._json(writer, 200, {"models": [model]})
        elif method == "GET" and path == "/_synthetic/stats":
            await self._json(writer, 200, self.stats.snapshot())
        elif method == "POST" and path == "/api/chat":
            request = json.loads(body or b"{}")
            if request.get("model") != MODEL:
                missing = {"error": f"model '{request.get('model')}' not found"}
                await self._json(writer, 404, missing)
                return True
            tokens = int((request.get("options") or {}).get("num_predict") or 0)
            tokens = tokens if tokens > 0 else self.config.default_tokens
            if not request.get("messages"):  # a load request: answer at once
                await self._json(writer, 200, self._final(0, arrived, "load"))
                return True
            if request.get("stream") is False:
                await asyncio.sleep(self.config.first_token_delay + tokens / self.config.rate)
                answer = self._final(tokens, arrived, "length")
                answer["message"]["content"] = TOKEN_TEXT * tokens
                await self._json(writer, 200, answer)
                return True
            return await self._stream(writer, tokens, arrived)
        else:
            await self._json(writer, 404, {"error": "not found"})
        return True

    async def _stream(self, writer: asyncio.StreamWriter, tokens: int, arrived: float) -> bool:
        stats = self.stats
        stats.streams += 1
        stats.active += 1
        stats.peak_active = max(stats.peak_active, stats.active)
        try:
            writer.write(
                b"HTTP/1.1 200 OK\r\ncontent-type: application/x-ndjson\r\n"
                b"transfer-encoding: chunked\r\n\r\n"
            )
            line = _chunk(
                {"model": MODEL, "created_at": "2026-01-01T00:00:00Z",
                 "message": {"role": "assistant", "content": TOKEN_TEXT}, "done": False}
            )  # fmt: skip
            first_at = arrived + self.config.first_token_delay
            interval = 1.0 / self.config.rate
            for i in range(tokens):
                due = first_at + i * interval
                wait = due - time.perf_counter()
                if wait > 0:
                    await asyncio.sleep(wait)
                if i % 8 == 0:  # sample: enough for percentiles, bounded memory
                    stats.lateness.append(max(0.0, time.perf_counter() - due))
                writer.write(line)
                await writer.drain()
                stats.tokens += 1
            writer.write(_chunk(self._final(tokens, arrived, "length")) + b"0\r\n\r\n")
            await writer.drain()
            return True
        except ConnectionError:
            return False
        finally:
            stats.active -= 1

    def _final(self, tokens: int, arrived: float, reason: str) -> dict[str, Any]:
        total = int((time.perf_counter() - arrived) * 1e9)
        eval_ns = max(1, int(tokens / self.config.rate * 1e9))
        return {
            "model": MODEL, "created_at": "2026-01-01T00:00:00Z",
            "message": {"role": "assistant", "content": ""}, "done": True,
            "done_reason": reason, "total_duration": total, "load_duration": 1000,
            "prompt_eval_count": 10, "prompt_eval_duration": 1000,
            "eval_count": tokens, "eval_duration": eval_ns,
        }  # fmt: skip

    async def _json(self, writer: asyncio.StreamWriter, status: int, obj: Any) -> None:
        await self._send(writer, status, json.dumps(obj).encode(), "application/json")

    async def _send(
        self, writer: asyncio.StreamWriter, status: int, data: bytes, ctype: str
    ) -> None:
        reason = {200: "OK", 404: "Not Found", 413: "Payload Too Large"}.get(status, "Error")
        writer.write(
            f"HTTP/1.1 {status} {reason}\r\ncontent-type: {ctype}\r\n"
            f"content-length: {len(data)}\r\n\r\n".encode()
            + data
        )
        await writer.drain()


def _chunk(obj: Any) -> bytes:
    data = (json.dumps(obj) + "\n").encode()
    return f"{len(data):x}\r\n".encode() + data + b"\r\n"


async def serve(host: str, port: int, config: SyntheticConfig) -> None:
    server = SyntheticOllama(config)
    listener = await asyncio.start_server(server.handle, host, port, backlog=1024)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"synthetic Ollama on http://{host}:{port} (pid {os.getpid()})", flush=True)
    async with listener:
        await stop.wait()


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
    config = SyntheticConfig(args.rate, args.first_token_delay, args.tokens)
    asyncio.run(serve(args.host, args.port, config))


if __name__ == "__main__":
    main()
