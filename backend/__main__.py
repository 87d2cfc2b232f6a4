"""`python -m backend`: serve the local Ollama-compatible engine.

Host and port default to OLLAMA_HOST (like `ollama serve`), else 127.0.0.1:11434.
"""

from __future__ import annotations

import argparse
import logging
import os

import uvicorn

from backend.engine import DEFAULT_KEEP_ALIVE, Engine, parse_keep_alive
from backend.server import build_app


def _default_host_port() -> tuple[str, int]:
    value = os.environ.get("OLLAMA_HOST", "").strip()
    if not value:
        return "127.0.0.1", 11434
    value = value.split("://", 1)[-1].rstrip("/")
    host, _, port = value.rpartition(":")
    if not host:  # no port given
        return value, 11434
    return host, int(port)


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        return int(raw)
    except ValueError:
        raise SystemExit(f"{name} must be a whole number, got {raw!r}") from None


def main(argv: list[str] | None = None) -> None:
    host, port = _default_host_port()
    parser = argparse.ArgumentParser(
        prog="python -m backend",
        description="Local CPU engine speaking the Ollama API, with small bundled models.",
    )
    parser.add_argument("--host", default=host, help="bind address (env OLLAMA_HOST)")
    parser.add_argument("--port", type=int, default=port, help="port (env OLLAMA_HOST)")
    parser.add_argument(
        "--num-parallel",
        type=int,
        default=_env_int("OLLAMA_NUM_PARALLEL", 4),
        help="requests generated at once per model (env OLLAMA_NUM_PARALLEL)",
    )
    parser.add_argument(
        "--max-queue",
        type=int,
        default=_env_int("OLLAMA_MAX_QUEUE", 512),
        help="requests that may wait before 503 (env OLLAMA_MAX_QUEUE)",
    )
    parser.add_argument(
        "--keep-alive",
        default=os.environ.get("OLLAMA_KEEP_ALIVE", str(int(DEFAULT_KEEP_ALIVE))),
        help="how long an idle model stays loaded, e.g. 5m, 30s, -1 (env OLLAMA_KEEP_ALIVE)",
    )
    args = parser.parse_args(argv)
    try:
        keep_alive = parse_keep_alive(args.keep_alive)
    except ValueError as exc:
        parser.error(str(exc))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    engine = Engine(
        num_parallel=args.num_parallel,
        max_queue=args.max_queue,
        default_keep_alive=DEFAULT_KEEP_ALIVE if keep_alive is None else keep_alive,
    )
    logging.getLogger("backend").info(
        "local engine on http://%s:%d (models: %s)",
        args.host,
        args.port,
        ", ".join(s.tag for s in engine.available()),
    )
    uvicorn.run(build_app(engine), host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
