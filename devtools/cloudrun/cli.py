"""`python -m devtools.cloudrun`: the emulator on a port, optionally with its own fake
metadata server; prints (and can write) the environment the UI needs to use it."""

from __future__ import annotations

import logging
import shlex
import sys
from pathlib import Path
from typing import Any

from pydantic import Field, field_validator
from pydantic_settings import SettingsConfigDict

from devtools.cloudrun.config import EmulatorConfig
from devtools.cloudrun.proxy import STATE_PATH
from devtools.cloudrun.serve import bind, build_emulator, uvicorn_server
from devtools.commandline import parse
from devtools.fake_metadata import start_fake_metadata

PROG = "python -m devtools.cloudrun"


class CommandLine(EmulatorConfig):
    """Cloud Run emulator before the local engine: ID-token IAM, scale to zero, 429s, timeouts."""

    model_config = SettingsConfigDict(cli_prog_name=PROG)

    host: str = Field("127.0.0.1", description="bind address")
    port: int = Field(8080, ge=0, le=65535, description="port (Cloud Run's PORT)")
    metadata: bool = Field(
        False, description="also run the fake metadata server and trust its tokens"
    )
    metadata_port: int = Field(
        0, ge=0, le=65535, description="port of the fake metadata server (0 = any free port)"
    )
    token_lifetime: float = Field(
        3600.0, gt=0, description="lifetime of the fake metadata server's ID tokens (s)"
    )
    env_file: Path | None = Field(
        None, description="write the UI's environment (KEY=value lines) to this file"
    )

    @field_validator("engine_args", mode="before")
    @classmethod
    def _shell_split(cls, value: Any) -> Any:
        # On the command line each --engine-args value is one shell-quoted string.
        if isinstance(value, list | tuple):
            return [part for item in value for part in shlex.split(str(item))]
        return value

    def _certs_come_later(self) -> bool:
        return self.metadata


def main(argv: list[str] | None = None) -> None:
    args = parse(CommandLine, argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per proxied request
    try:
        sock = bind(args.host, args.port)
    except OSError as exc:
        print(f"{PROG}: error: cannot listen on {args.host}:{args.port}: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    metadata = None
    config: EmulatorConfig = args
    if args.metadata:
        metadata = start_fake_metadata(port=args.metadata_port, token_lifetime=args.token_lifetime)
        config = args.model_copy(update={"certs_url": args.certs_url or metadata.certs_url})
    port = int(sock.getsockname()[1])
    app = build_emulator(config, port)
    env = {"LLM_BACKEND_URL": f"http://127.0.0.1:{port}"}
    if config.require_auth:
        env["LLM_AUTH"] = "google"
    if metadata is not None:
        env.update(metadata.env())
    lines = [f"{key}={value}" for key, value in env.items()]
    print(f"Cloud Run emulator on http://{args.host}:{port} (state: {STATE_PATH})", flush=True)
    print("Give the UI this environment:", flush=True)
    for line in lines:
        print(f"  {line}", flush=True)
    if args.env_file is not None:
        args.env_file.write_text("".join(line + "\n" for line in lines))
    try:
        uvicorn_server(app).run(sockets=[sock])
    finally:
        if metadata is not None:
            metadata.stop()
