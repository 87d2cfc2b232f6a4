"""What the emulator does: one validated settings model, also the source of its command line."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, field_validator, model_validator

from devtools.commandline import CommandLineSettings


class EmulatorConfig(CommandLineSettings):
    """The emulator's behaviour. Field names are the keyword arguments; on the command line
    each is a kebab-case flag (`--start-delay`), or its alias where one is given
    (`invokers=...` in Python, `--invoker` on the command line)."""

    start_delay: float = Field(
        5.0, ge=0, description="emulated instance start before the engine is spawned (s)"
    )
    idle_timeout: float = Field(
        60.0, gt=0, description="scale to zero after this long without requests (s)"
    )
    min_instances: int = Field(
        0, ge=0, le=1, description="1 keeps the engine running (no scale to zero)"
    )
    max_instances: int = Field(1, ge=1, description="instances the service may run")
    concurrency: int = Field(4, ge=1, description="requests per instance at once")
    queue_timeout: float = Field(
        10.0, ge=0, description="how long a request beyond capacity waits before 429 (s)"
    )
    request_timeout: float = Field(300.0, gt=0, description="504 / stream cut after this long (s)")
    startup_timeout: float = Field(
        120.0, gt=0, description="how long the engine may take to answer once spawned (s)"
    )
    # --- IAM ---
    allow_unauthenticated: bool = Field(
        False, description="do not require ID tokens (like gcloud's --allow-unauthenticated)"
    )
    certs_url: str | None = Field(
        None,
        description="certificates that sign accepted ID tokens (Google: "
        "https://www.googleapis.com/oauth2/v1/certs)",
    )
    audiences: tuple[str, ...] = Field(
        (),
        validation_alias="audience",
        description="accepted token audience (repeatable; default: this server's "
        "http://127.0.0.1:PORT and http://localhost:PORT)",
    )
    invokers: frozenset[str] | None = Field(
        None,
        validation_alias="invoker",
        description="account email allowed to invoke (repeatable; default: any)",
    )
    clock_skew: int = Field(10, ge=0, description="tolerated clock skew of tokens (s)")
    certs_cache_seconds: float = Field(
        300.0, ge=0, description="longest time the certificates are cached (s)"
    )
    # --- upstream ---
    engine_args: tuple[str, ...] = Field(
        (), description="extra arguments for `python -m backend`, e.g. '--num-parallel 4'"
    )
    engine_log: Path | None = Field(
        None, description="file for the engine's output (null: this terminal)"
    )
    upstream_url: str | None = Field(
        None,
        validation_alias="upstream",
        description="proxy to this always-on URL instead of managing an engine",
    )
    connect_timeout: float = Field(5.0, gt=0, description="connect timeout to the engine (s)")

    @field_validator("upstream_url")
    @classmethod
    def _no_trailing_slash(cls, url: str | None) -> str | None:
        return url.rstrip("/") if url else url

    @model_validator(mode="after")
    def _auth_needs_certificates(self) -> EmulatorConfig:
        if self.require_auth and not self.certs_url and not self._certs_come_later():
            raise ValueError(
                "certs_url is required when authentication is on (or allow unauthenticated)"
            )
        return self

    def _certs_come_later(self) -> bool:
        """The command line may start a metadata server that provides them."""
        return False

    @property
    def require_auth(self) -> bool:
        return not self.allow_unauthenticated

    @property
    def capacity(self) -> int:
        return self.max_instances * self.concurrency


def default_audiences(port: int) -> list[str]:
    """The audiences Cloud Run accepts for a service: its URLs (here, both local spellings)."""
    return [f"http://127.0.0.1:{port}", f"http://localhost:{port}"]
