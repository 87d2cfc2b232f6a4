"""All UI settings in one place.

Precedence: an explicit keyword argument beats an environment variable beats the default.
Every field names its environment variable in its description, so an error can say which
variable to set.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Annotated, Literal, get_args

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

DEFAULT_LOCAL_BACKEND = "http://127.0.0.1:11434"

# The HTTP APIs a backend may speak: Ollama's (/api/...) or the OpenAI-compatible one
# (/v1/models, /v1/chat/completions) of vLLM, llama.cpp's server, TGI, SGLang.
BackendApi = Literal["ollama", "openai"]
BACKEND_APIS: tuple[str, ...] = get_args(BackendApi)
# A route's URL may name its API first: `openai+https://...` (as in git+https://).
_API_PREFIX = re.compile(r"(?P<api>[a-z0-9_-]+)\+(?P<url>.+)", re.IGNORECASE)


class BackendRoute(BaseModel):
    """Where one family's models are served, and which API that backend speaks (None in
    an unresolved route: it speaks LLM_BACKEND_API's)."""

    model_config = ConfigDict(frozen=True)

    url: str
    api: BackendApi | None = None


def parse_route(family: str, value: object) -> object:
    """A route as written in LLM_BACKEND_ROUTES: `[API+]URL`, e.g. `openai+https://...`."""
    if not isinstance(value, str):
        return value
    value = value.strip()
    match = _API_PREFIX.fullmatch(value)
    if match is None:
        return {"url": value}
    api = match["api"].lower()
    if api not in BACKEND_APIS:
        raise ValueError(
            f"LLM_BACKEND_ROUTES entry {family!r}: {match['api']!r} is not a backend API "
            f"(write {' or '.join(a + '+URL' for a in BACKEND_APIS)}, or the URL alone)"
        )
    return {"url": match["url"], "api": api}


def _split_csv(value: object) -> object:
    if isinstance(value, str):
        value = value.strip()
        if value.startswith("["):
            return json.loads(value)
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


class Settings(BaseSettings):
    # A field is read from LLM_<FIELD NAME>, and first from the variables its validation_alias
    # names, if any; populate_by_name keeps Settings(field_name=...) working for those.
    model_config = SettingsConfigDict(env_prefix="LLM_", extra="ignore", populate_by_name=True)

    # --- where the models are ------------------------------------------------------------
    backend_url: str | None = Field(
        default=None,
        # LLM_BACKEND_URL first: it wins when both are set.
        validation_alias=AliasChoices("LLM_BACKEND_URL", "OLLAMA_HOST"),
        description=(
            "Ollama API base URL (env LLM_BACKEND_URL, or OLLAMA_HOST). Unset: use an Ollama "
            "on 127.0.0.1:11434 if one answers, else start the embedded CPU engine."
        ),
    )
    backend_api: BackendApi = Field(
        default="ollama",
        description=(
            "The API the backend at backend_url speaks (env LLM_BACKEND_API): 'ollama' or "
            "'openai' (an OpenAI-compatible server: vLLM, llama.cpp's server, TGI, ...)."
        ),
    )
    backend_routes: Annotated[dict[str, BackendRoute], NoDecode] = Field(
        default_factory=dict,
        description=(
            'Per-family backends (env LLM_BACKEND_ROUTES), JSON like {"gemma": "https://..."}'
            " or gemma=https://...,llama=openai+https://... A URL may start with its API "
            "(ollama+ or openai+); without one it speaks LLM_BACKEND_API's. Families not "
            "listed use backend_url."
        ),
    )
    allowed_models: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Comma-separated model allow-list (env LLM_ALLOWED_MODELS); empty = all.",
    )

    # --- authentication to the backend ----------------------------------------------------
    auth: Literal["auto", "none", "google"] = Field(
        default="auto",
        description=(
            "Backend auth (env LLM_AUTH): 'google' sends a Google ID token, 'none' sends "
            "nothing, 'auto' = google for https backends, none otherwise."
        ),
    )
    auth_audience: str | None = Field(
        default=None,
        description="ID token audience (env LLM_AUTH_AUDIENCE); default: the backend root URL.",
    )

    # --- serving -------------------------------------------------------------------------
    host: str = Field(default="0.0.0.0", validation_alias="LLM_UI_HOST")
    port: int = Field(default=7860, validation_alias="PORT")
    concurrency_limit: int = Field(
        default=100,
        ge=1,
        validation_alias="LLM_CONCURRENCY",
        description="Streams served at once by one UI process (env LLM_CONCURRENCY).",
    )
    max_queue: int = Field(
        default=200,
        ge=1,
        description="Requests waiting beyond the concurrency limit (env LLM_MAX_QUEUE).",
    )
    rate_limit_per_minute: int = Field(
        default=30,
        ge=1,
        validation_alias="LLM_RATE_LIMIT",
        description="Chat requests one client may start per minute (env LLM_RATE_LIMIT).",
    )
    gradio_share: bool = Field(
        default=False,
        description="Open Gradio's public share tunnel for a quick demo (env LLM_GRADIO_SHARE).",
    )

    # --- input limits --------------------------------------------------------------------
    max_message_chars: int = Field(
        default=8000,
        ge=1,
        description="Longest accepted user message in characters (env LLM_MAX_MESSAGE_CHARS).",
    )
    max_tokens_limit: int = Field(
        default=2048,
        ge=1,
        description="Largest max-tokens a user may ask for (env LLM_MAX_TOKENS_LIMIT).",
    )
    context_tokens: int = Field(
        default=4096,  # the context the GPU image loads models with (OLLAMA_CONTEXT_LENGTH)
        ge=256,
        description="Context window the UI fits history into (env LLM_CONTEXT_TOKENS).",
    )

    # --- timeouts (seconds; never None) --------------------------------------------------
    connect_timeout: float = Field(default=5.0, gt=0)
    read_timeout: float = Field(default=300.0, gt=0)
    probe_timeout: float = Field(
        default=1.5,
        gt=0,
        description="A backend that does not answer /api/version this fast is cold.",
    )
    cold_start_deadline: float = Field(
        default=300.0,
        gt=0,
        description="Time allowed for a cold start with retries (env LLM_COLD_START_DEADLINE).",
    )
    connect_retry_window: float = Field(
        default=15.0,
        ge=0,
        description=(
            "How long a refused connection is retried (env LLM_CONNECT_RETRY_WINDOW). Cloud "
            "Run holds cold requests instead of refusing them, so a refusal means trouble."
        ),
    )
    typical_cold_start: float = Field(
        default=30.0,
        gt=0,
        description="Cold-start duration shown before this process has measured one.",
    )

    # --- GPU cost estimate and status (README "Honest cost") -----------------------------
    gpu_price_per_hour: float = Field(
        default=1.4209,  # L4 + 8 vCPU + 32 GiB (the deploy's shape), Cloud Run tier 1
        ge=0,
        description=(
            "USD per GPU instance-hour, GPU plus its CPU and memory (env "
            "LLM_GPU_PRICE_PER_HOUR); only used for the cost estimates shown."
        ),
    )
    gpu_concurrency: int = Field(
        default=4,  # deploy/deploy.py: --concurrency = OLLAMA_NUM_PARALLEL = 4
        ge=1,
        description="Requests one GPU instance serves at once (env LLM_GPU_CONCURRENCY).",
    )
    backend_idle_timeout: float = Field(
        default=900.0,
        gt=0,
        description=(
            "Seconds without a backend answer after which the status says the backend is "
            "probably asleep (env LLM_BACKEND_IDLE_TIMEOUT)."
        ),
    )

    # --- share links and votes -----------------------------------------------------------
    share_secret: str | None = Field(
        default=None,
        description=(
            "Key that signs share links (env LLM_SHARE_SECRET). Unset: a key kept in the "
            "user's cache folder (fine locally; set it on Cloud Run)."
        ),
    )
    public_url: str | None = Field(
        default=None,
        description="Public base URL used in share links (env LLM_PUBLIC_URL).",
    )
    max_request_bytes: int = Field(
        default=1024 * 1024,
        ge=64 * 1024,
        description="Largest request body accepted, before parsing (env LLM_MAX_REQUEST_BYTES).",
    )
    image_max_bytes: int = Field(
        default=10 * 1000 * 1000,
        ge=64 * 1024,
        description=(
            "Largest image a message may carry, before it is resized (env "
            "LLM_IMAGE_MAX_BYTES); also the body cap of the upload route."
        ),
    )
    events_per_minute: int = Field(
        default=600,
        ge=1,
        description=(
            "API events (any endpoint, page-load events included) one client may start a "
            "minute (env LLM_EVENTS_PER_MINUTE)."
        ),
    )
    streams_per_client: int = Field(
        default=3,
        ge=1,
        description=(
            "Replies one client may have generating at once, all tabs together (env "
            "LLM_STREAMS_PER_CLIENT); a three-model comparison counts three."
        ),
    )
    event_stream_grace: float = Field(
        default=5.0,
        gt=0,
        description=(
            "Seconds a queued reply waits for its client to open the event stream before it "
            "is cancelled unsent (env LLM_EVENT_STREAM_GRACE); a dropped stream ends it at "
            "once (ui/web/event_streams.py). A browser opens it within milliseconds."
        ),
    )
    model_slots: int | None = Field(
        default=None,
        ge=1,
        description=(
            "Replies one UI process lets a model generate at once (env LLM_MODEL_SLOTS); "
            "more wait in the UI and are served round-robin by client (ui/turn/fair_slots.py). "
            "Default: LLM_GPU_CONCURRENCY, the backend's parallel slots (OLLAMA_NUM_PARALLEL). "
            "Raise it when a backend service runs several GPU instances."
        ),
    )
    votes_per_client_per_day: int = Field(
        default=200,
        ge=1,
        description="Battle votes one client may cast in 24 hours (per UI instance).",
    )
    trusted_proxies: str = Field(
        default="",
        description=(
            "Comma-separated addresses or networks of proxies whose X-Forwarded-For names "
            "the client (env LLM_TRUSTED_PROXIES). Empty (the default): the socket peer is "
            "the client. On Cloud Run (K_SERVICE set) the front end's last hop is used."
        ),
    )
    votes: str = Field(
        default_factory=lambda: f"sqlite:///{default_data_dir() / 'votes.sqlite3'}",
        description=(
            "Where battle votes are kept (env LLM_VOTES): sqlite:///PATH (default: "
            "votes.sqlite3 in the user's data folder) or firestore (the Cloud Run deploy)."
        ),
    )

    @field_validator("votes")
    @classmethod
    def _vote_store(cls, value: str) -> str:
        value = value.strip()
        if value == "firestore" or (value.startswith("sqlite:///") and len(value) > 10):
            return value
        raise ValueError(f"LLM_VOTES must be sqlite:///PATH or firestore, not {value!r}")

    @field_validator("allowed_models", mode="before")
    @classmethod
    def _csv_models(cls, value: object) -> object:
        return _split_csv(value)

    @field_validator("backend_routes", mode="before")
    @classmethod
    def _routes(cls, value: object) -> object:
        if isinstance(value, str):
            value = value.strip()
            if not value:
                return {}
            if value.startswith("{"):
                value = json.loads(value)
            else:
                pairs = [p.split("=", 1) for p in value.split(",") if p.strip()]
                bad = [p[0] for p in pairs if len(p) != 2]
                if bad:
                    raise ValueError(f"LLM_BACKEND_ROUTES entry {bad[0]!r} is not family=url")
                value = {k.strip().lower(): v.strip() for k, v in pairs}
        if isinstance(value, dict):
            return {family: parse_route(family, route) for family, route in value.items()}
        return value

    @field_validator("backend_url", mode="before")
    @classmethod
    def _normalize_url(cls, value: object) -> object:
        if isinstance(value, str):
            value = value.strip()
            if not value:
                return None
            return normalize_backend_url(value)
        return value

    @model_validator(mode="after")
    def _check_routes(self) -> Settings:
        self.backend_routes = {
            family: BackendRoute(
                url=normalize_backend_url(route.url), api=route.api or self.backend_api
            )
            for family, route in self.backend_routes.items()
        }
        # One URL is one server: it cannot speak two APIs.
        seen: dict[str, tuple[str | None, str]] = {}  # url -> (api, where it was set)
        if self.backend_url:
            seen[self.backend_url.rstrip("/")] = (self.backend_api, "LLM_BACKEND_URL")
        for family, route in self.backend_routes.items():
            api, where = seen.setdefault(route.url.rstrip("/"), (route.api, family))
            if api != route.api:
                raise ValueError(
                    f"LLM_BACKEND_ROUTES: {family!r} speaks {route.api} to the backend that "
                    f"{where} speaks {api} to; one server speaks one API"
                )
        return self


def default_data_dir() -> Path:
    """Where a local run keeps data that must outlive it (the votes):
    $XDG_DATA_HOME/serverless-llm-chat, by default ~/.local/share/serverless-llm-chat."""
    data_home = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(data_home) / "serverless-llm-chat"


def normalize_backend_url(value: str) -> str:
    """Accept what OLLAMA_HOST accepts: `host`, `host:port`, `http://host:port`."""
    value = value.strip().rstrip("/")
    if "://" not in value:
        value = "http://" + value
    scheme, rest = value.split("://", 1)
    host = rest.split("/", 1)[0]
    if scheme == "http" and ":" not in host.rsplit("]", 1)[-1]:
        # Like Ollama's own client: a bare http host means the default Ollama port.
        new_host = "127.0.0.1" if host in ("", "0.0.0.0") else host
        rest = f"{new_host}:11434" + rest[len(host) :]
    return f"{scheme}://{rest}"
