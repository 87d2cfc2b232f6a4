"""Stand-in for the `ollama` binary in the GPU image, for tests of deploy/llm-entrypoint.sh.

`ollama serve` answers the Ollama API calls the entrypoint and the UI's pre-warm make, the way
Ollama 0.24.0 does (server/sched.go, server/routes.go at tag v0.24.0):
- a model starts loading on the first /api/generate or /api/chat that names it; concurrent
  requests for the same model wait for that one load; the reply comes once it is loaded;
- /api/ps lists a model from the moment its load starts (Ollama puts the runner into its
  `loaded` map before the runner is up), with `size` and `size_vram` in bytes;
- a model that is not installed gets Ollama's 404 {"error": "model '...' not found"}.

Environment:
  OLLAMA_HOST         host:port to listen on
  FAKE_INSTALLED      space-separated installed tags
  FAKE_LOAD_SECONDS   how long each load takes
  FAKE_PROCESSOR      gpu (size_vram == size), cpu (size_vram 0) or split (half on the GPU):
                      what Ollama reports when its CUDA backend works, is refused, or runs out
                      of VRAM
  FAKE_EVENTS         file that gets one JSON line per event: {"event": "load-start" |
                      "load-done" | "request", "model": ...}
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

MODEL_BYTES = 3_338_801_804  # gemma3:4b's size in `ollama ps` on an L4, roughly

state_lock = threading.Lock()
loads: dict[str, threading.Event] = {}  # model -> set once loaded


def event(kind: str, model: str) -> None:
    with state_lock, open(os.environ["FAKE_EVENTS"], "a") as log:
        log.write(json.dumps({"event": kind, "model": model}) + "\n")


def vram_bytes() -> int:
    processor = os.environ.get("FAKE_PROCESSOR", "gpu")
    return {"gpu": MODEL_BYTES, "cpu": 0, "split": MODEL_BYTES // 2}[processor]


def load(model: str) -> None:
    """Start the model's load unless one is under way, then wait until it is loaded."""
    with state_lock:
        loaded = loads.get(model)
        starting = loaded is None
        if starting:
            loaded = loads[model] = threading.Event()
    assert loaded is not None
    if starting:
        event("load-start", model)
        time.sleep(float(os.environ.get("FAKE_LOAD_SECONDS", "0")))
        event("load-done", model)
        loaded.set()
    loaded.wait()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args: object) -> None:
        pass

    def reply(self, status: int, payload: object) -> None:
        body = json.dumps(payload, separators=(",", ":")).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        if self.path == "/api/version":
            return self.reply(200, {"version": "0.24.0"})
        if self.path == "/api/ps":
            with state_lock:
                listed = list(loads)
            models = [
                {
                    "name": model,
                    "model": model,
                    "size": MODEL_BYTES,
                    "digest": "a2af6cc3eb7fa8be8504abaf9b04e88f17a119ec3f04a3addf55f92841195f5a",
                    "details": {"parent_model": "", "format": "gguf", "family": "gemma3",
                                "families": ["gemma3"], "parameter_size": "4.3B",
                                "quantization_level": "Q4_K_M"},
                    "expires_at": "2318-08-01T00:00:00Z",
                    "size_vram": vram_bytes(),
                    "context_length": 4096,
                }
                for model in listed
            ]  # fmt: skip
            return self.reply(200, {"models": models})
        self.reply(404, {"error": "not found"})

    def do_POST(self) -> None:
        request = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        model = request.get("model", "")
        event("request", model)
        if self.path not in ("/api/generate", "/api/chat"):
            return self.reply(404, {"error": "not found"})
        if model not in os.environ["FAKE_INSTALLED"].split():
            return self.reply(404, {"error": f"model '{model}' not found"})
        load(model)
        self.reply(200, {"model": model, "done": True, "done_reason": "load"})


def main() -> None:
    assert sys.argv[1:] == ["serve"], sys.argv
    host, port = os.environ["OLLAMA_HOST"].rsplit(":", 1)
    time.sleep(0.3)  # Ollama takes a moment before it listens
    server = ThreadingHTTPServer((host, int(port)), Handler)
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    server.serve_forever()


if __name__ == "__main__":
    main()
