"""`python -m backend`: serve the local Ollama-compatible engine.

Host and port default to OLLAMA_HOST (like `ollama serve`), else 127.0.0.1:11434.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

import uvicorn

from backend.engine import DEFAULT_NUM_CTX, Engine, parse_env_keep_alive
from backend.server import IDLE_CONNECTION_S, build_app


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
        help="requests that may wait for a model to load before 503 (env OLLAMA_MAX_QUEUE)",
    )
    parser.add_argument(
        "--keep-alive",
        default=os.environ.get("OLLAMA_KEEP_ALIVE", "5m"),
        help="how long an idle model stays loaded: a duration (5m, 30s) or seconds; "
        "negative = forever (env OLLAMA_KEEP_ALIVE)",
    )
    parser.add_argument(
        "--context-length",
        type=int,
        default=_env_int("OLLAMA_CONTEXT_LENGTH", DEFAULT_NUM_CTX),
        help="context of each request unless it sets num_ctx (env OLLAMA_CONTEXT_LENGTH)",
    )
    parser.add_argument(
        "--ps-while-loading",
        choices=("list", "wait"),
        default=os.environ.get("ENGINE_PS_WHILE_LOADING", "list"),
        help="/api/ps while a model loads: list it, as the pinned Ollama 0.24 does, or wait "
        "until it is loaded, as Ollama 0.32.4+ does (env ENGINE_PS_WHILE_LOADING)",
    )
    parser.add_argument(
        "--hold-loads-while",
        type=Path,
        default=None,
        metavar="FILE",
        help="for tests: while FILE exists, a model load does not finish",
    )
    args = parser.parse_args(argv)
    try:
        keep_alive = parse_env_keep_alive(args.keep_alive)
    except ValueError as exc:
        parser.error(str(exc))
    # The log writes to its own copy of stderr: while llama-cpp-python builds a context it
    # points fd 2 at /dev/null (see engine._BUILDING), and lines logged meanwhile were lost.
    log_stream = os.fdopen(os.dup(sys.stderr.fileno()), "w", buffering=1)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(name)s %(message)s", stream=log_stream
    )
    engine = Engine(
        num_parallel=args.num_parallel,
        max_queue=args.max_queue,
        default_keep_alive=keep_alive,
        default_num_ctx=args.context_length,
        ps_while_loading=args.ps_while_loading,
        hold_loads_while=args.hold_loads_while,
    )
    logging.getLogger("backend").info(
        "local engine on http://%s:%d (models: %s)",
        args.host,
        args.port,
        ", ".join(s.tag for s in engine.available()),
    )
    uvicorn.run(
        build_app(engine),
        host=args.host,
        port=args.port,
        log_level="warning",
        timeout_keep_alive=IDLE_CONNECTION_S,
    )


if __name__ == "__main__":
    main()
