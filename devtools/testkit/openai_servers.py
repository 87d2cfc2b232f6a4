"""OpenAI-compatible servers for tests and benchmarks.

- `start_llama_cpp_server`: llama-cpp-python's own server (`python -m llama_cpp.server`,
  llama_cpp/server/__main__.py) on the local engine's smollm2 GGUF: a real third-party
  OpenAI-compatible backend. It serves one request at a time; `--interrupt_requests False`
  keeps a second request (a model list, a Compare column) from cutting the running reply
  short, which its default does (llama_cpp/server/app.py get_event_publisher).
- `FakeOpenAI`: a real local HTTP server speaking the OpenAI chat API that does what the
  real one cannot: errors, 429/503, a held first token, usage, a held /health. The model
  name picks the behaviour of /v1/chat/completions:

      fake-ok        streams `words` words (at most max_tokens), usage when asked for
      fake-nousage   the same without a usage chunk (llama-cpp-python's server sends none)
      fake-held      holds the first word until `release()` (a slow first token)
      fake-429, fake-503, fake-401, fake-500   that status with {"error": {"message": ...}}
      fake-midstream 3 words, then an {"error": ...} event inside the 200 stream
      fake-drop      3 words, then hangs up mid-body
      fake-garbage   2 words, then an event that is not JSON
      anything else  404 {"error": {"message": "The model `x` does not exist."}} (vLLM's words)

  Answers are the `openai` package's own types, serialised; every request is recorded in
  `requests` as (method, path, headers, json body or None).
"""

from __future__ import annotations

import json
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler
from typing import Any

from openai.types import CompletionUsage, Model
from openai.types.chat import ChatCompletionChunk
from openai.types.chat.chat_completion_chunk import Choice, ChoiceDelta

from backend.model_files import gguf_path
from devtools.testkit.fake_ollama import QuietHTTPServer
from devtools.testkit.procs import Proc, free_port, wait_http

LLAMA_CPP_MODEL = "smollm2:135m"  # the alias llama-cpp-python's server lists its GGUF under
MODELS = [
    "fake-ok", "fake-nousage", "fake-held", "fake-429", "fake-503", "fake-401", "fake-500",
    "fake-midstream", "fake-drop", "fake-garbage",
]  # fmt: skip


def start_llama_cpp_server(
    *, name: str = "llama-cpp-server", cpu: int | None = None, threads: int = 1
) -> tuple[Proc, str]:
    """llama-cpp-python's OpenAI-compatible server on the smollm2 GGUF (flags: its
    ModelSettings and ServerSettings, llama_cpp/server/settings.py); returns it and its URL
    once /v1/models answers. `cpu` pins it to that core (taskset)."""
    port = free_port()
    pin = ["taskset", "-c", str(cpu)] if cpu is not None else []
    args = [
        *pin, sys.executable, "-m", "llama_cpp.server",
        "--model", str(gguf_path(LLAMA_CPP_MODEL)), "--model_alias", LLAMA_CPP_MODEL,
        "--host", "127.0.0.1", "--port", str(port),
        "--n_threads", str(threads), "--n_threads_batch", str(threads),
        "--n_ctx", "4096",  # the UI's LLM_CONTEXT_TOKENS default
        "--interrupt_requests", "False", "--verbose", "False",
    ]  # fmt: skip
    # uvicorn.run reads HOST and PORT before the flags (llama_cpp/server/__main__.py).
    proc = Proc(name, args, env={"HOST": "127.0.0.1", "PORT": str(port)})
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(url + "/v1/models", timeout=120, proc=proc.popen)
    except Exception:
        proc.stop()
        log = proc.log()[-3000:]
        raise RuntimeError(f"llama_cpp.server did not start; its log:\n{log}") from None
    return proc, url


class FakeOpenAI:
    def __init__(self, *, words: int = 5, token_delay: float = 0.01) -> None:
        self.words = words
        self.token_delay = token_delay
        self.requests: list[tuple[str, str, dict[str, str], Any]] = []
        self.health_held = threading.Event()  # set: /health answers nothing until cleared
        self._release = threading.Event()
        self._lock = threading.Lock()
        self.server = QuietHTTPServer(("127.0.0.1", 0), self._handler_class())
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> FakeOpenAI:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._release.set()
        self.health_held.clear()
        self.server.shutdown()
        self.server.server_close()

    def hold(self) -> None:
        """Hold the words of fake-held replies until `release()`."""
        self._release.clear()

    def release(self) -> None:
        """Let fake-held replies send their words."""
        self._release.set()

    def chat_requests(self) -> list[dict[str, Any]]:
        return [body for method, path, _, body in self.requests if path == "/v1/chat/completions"]

    def calls(self, path: str) -> int:
        return sum(1 for _, seen, _, _ in self.requests if seen == path)

    def _record(self, method: str, path: str, headers: dict[str, str], body: Any) -> None:
        with self._lock:
            self.requests.append((method, path, headers, body))

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:  # quiet
                pass

            def do_GET(self) -> None:
                fake._record("GET", self.path, dict(self.headers), None)
                if self.path == "/health":
                    while fake.health_held.is_set():
                        time.sleep(0.02)
                    self._send(200, "", "text/plain")
                elif self.path == "/v1/models":
                    data = [
                        Model(id=m, created=0, object="model", owned_by="fake").model_dump()
                        for m in MODELS
                    ]
                    self._json(200, {"object": "list", "data": data})
                else:
                    self._json(404, {"detail": "Not Found"})

            def do_POST(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                body = json.loads(self.rfile.read(length) or b"{}")
                fake._record("POST", self.path, dict(self.headers), body)
                if self.path != "/v1/chat/completions":
                    self._json(404, {"detail": "Not Found"})
                    return
                model = str(body.get("model", ""))
                limit = min(int(body.get("max_tokens") or fake.words), fake.words)
                usage = bool((body.get("stream_options") or {}).get("include_usage"))
                statuses = {"fake-429": 429, "fake-503": 503, "fake-401": 401, "fake-500": 500}
                if model in statuses:
                    words = {429: "Too many requests", 503: "Service unavailable"}
                    message = words.get(statuses[model], f"fake failure {statuses[model]}")
                    self._json(statuses[model], {"error": {"message": message}})
                elif model in ("fake-ok", "fake-nousage", "fake-held"):
                    if model == "fake-held":
                        fake._release.wait()
                    self._stream(model, limit, "done", usage=usage and model != "fake-nousage")
                elif model in ("fake-midstream", "fake-drop", "fake-garbage"):
                    self._stream(model, 3 if model != "fake-garbage" else 2, model[5:])
                else:
                    message = f"The model `{model}` does not exist."
                    self._json(404, {"error": {"message": message, "code": 404}})

            # --- helpers ----------------------------------------------------------------
            def _send(self, status: int, text: str, ctype: str) -> None:
                data = text.encode()
                self.send_response(status)
                self.send_header("content-type", ctype)
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _json(self, status: int, obj: dict[str, Any]) -> None:
                self._send(status, json.dumps(obj), "application/json")

            def _event(self, data: str) -> None:
                payload = f"data: {data}\n\n".encode()
                self.wfile.write(f"{len(payload):x}\r\n".encode() + payload + b"\r\n")
                self.wfile.flush()

            def _chunk(self, model: str, text: str | None, finish: Any = None) -> str:
                choice = Choice(index=0, delta=ChoiceDelta(content=text), finish_reason=finish)
                chunk = ChatCompletionChunk(
                    id="chatcmpl-fake", choices=[choice], created=0, model=model,
                    object="chat.completion.chunk",
                )  # fmt: skip
                return chunk.model_dump_json(exclude_none=True)

            def _stream(self, model: str, words: int, ending: str, usage: bool = False) -> None:
                self.send_response(200)
                self.send_header("content-type", "text/event-stream")
                self.send_header("transfer-encoding", "chunked")
                self.end_headers()
                try:
                    for i in range(words):
                        time.sleep(fake.token_delay)
                        self._event(self._chunk(model, f"word{i} "))
                    if ending == "midstream":
                        self._event(json.dumps({"error": {"message": "the engine died"}}))
                    elif ending == "garbage":
                        self._event("<html>proxy error</html>")
                    elif ending == "drop":
                        self.wfile.write(b"40\r\ndata: {")
                        self.wfile.flush()
                        self.close_connection = True
                        return
                    else:
                        finish = "length" if words >= fake.words else "stop"
                        self._event(self._chunk(model, None, finish))
                        if usage:
                            # Two tokens a word: the count the UI shows is the server's.
                            tokens = 2 * words
                            counts = CompletionUsage(
                                prompt_tokens=7, completion_tokens=tokens, total_tokens=7 + tokens
                            )
                            last = ChatCompletionChunk(
                                id="chatcmpl-fake", choices=[], created=0, model=model,
                                object="chat.completion.chunk", usage=counts,
                            )  # fmt: skip
                            self._event(last.model_dump_json(exclude_none=True))
                        self._event("[DONE]")
                    self.wfile.write(b"0\r\n\r\n")
                    self.wfile.flush()
                except (BrokenPipeError, ConnectionResetError):
                    self.close_connection = True

        return Handler
