"""The OpenAI-compatible kind of backend (`LLM_BACKEND_API=openai`, or an `openai+` route):
vLLM, llama.cpp's server, llama-cpp-python's server, TGI, SGLang, Ollama's /v1.

Built on the official `openai.AsyncOpenAI` over an `httpx.AsyncClient` made from the same
`HttpOptions` as the Ollama path (timeouts, pool limits, redirects and the Google ID-token
`httpx.Auth`; openai 3.x takes a legacy httpx client as well as its own httpx2 one,
openai/_base_client.py AsyncAPIClient.__init__), with the openai client's own retries off:
ui/turn/warming.py decides what is sent again. Errors leave as openai's exceptions and
ui/backend_access/client.py `ERRORS` maps them to the same messages as Ollama's.

What differs from Ollama's API, and how the UI makes up for it:

- Parameters: Ollama's option names become the request's fields (`OPTION_FIELDS`:
  num_predict -> max_tokens); keep_alive has no counterpart (the server keeps its model).
- Messages: the UI's are Ollama's shape (`role`, `content`, optional `images`, base64); an
  image becomes an `image_url` content part holding a data URL.
- Figures: the stream carries no timings. `stream_options.include_usage` asks for a last
  chunk with `usage` (token counts; "an additional chunk will be streamed before the
  data: [DONE] message ... the choices field will always be an empty array", the OpenAI API
  reference, ChatCompletionStreamOptions). A server that sends none (llama-cpp-python's
  0.3.36 ignores the field) gets its pieces counted: each chunk carries one token there.
  Tokens/s is measured by the UI's clock from the first piece to the last.
- Liveness: GET /health answers at once on vLLM (vllm/entrypoints/serve/instrumentator/
  health.py) and llama.cpp's server; a server without it answers 404, which proves it is
  up as well. /v1/models is no probe: llama-cpp-python's server serves it only between
  replies (it waits for the model's lock, llama_cpp/server/app.py get_models).
- Loads: these servers load their model at start and report no load (no /api/ps, no
  load_duration), so the cold-start status never says "loading" for them
  (BackendClient.reports_loads).
"""

from __future__ import annotations

import base64
import binascii
import logging
import time
from collections.abc import AsyncGenerator, Callable, Mapping, Sequence
from typing import Any, cast

import httpx
import openai
from openai.types.chat import ChatCompletionMessageParam

from ui.backend_access.events import ChatEvent, ReplyDone, ReplyStats, TokenDelta
from ui.errors import BackendResponseError

logger = logging.getLogger(__name__)

HEALTH_PATH = "/health"  # the liveness probe (see the module docstring)
MODELS_PATH = "/v1/models"  # what answers here speaks this API (the API check on a 404)
# Ollama's option names (what the UI's turns send, ui/turn/checks.py) and their fields in
# an OpenAI chat completion request; other options have no counterpart and are left out.
OPTION_FIELDS = {
    "temperature": "temperature",
    "top_p": "top_p",
    "num_predict": "max_tokens",
    "stop": "stop",
    "seed": "seed",
    "presence_penalty": "presence_penalty",
    "frequency_penalty": "frequency_penalty",
}
# The openai client insists on a key; its Authorization header is left out (omit) of every
# call, so a server sees either no credentials or the ID token that the httpx auth adds.
_NO_KEY = "not-used"
_NO_KEY_HEADER: dict[str, str | openai.Omit] = {"Authorization": openai.omit}
# First bytes of the image formats the UI may pass on, for the data URL's media type.
_IMAGE_MAGIC = (
    (b"\x89PNG", "image/png"),
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"GIF8", "image/gif"),
    (b"RIFF", "image/webp"),
)


class OpenAIBackend:
    """One OpenAI-compatible backend in one event loop."""

    def __init__(
        self, url: str, http: httpx.AsyncClient, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.http = http  # its own pool, as the ollama client has its own
        self.clock = clock  # times the pieces of a reply (its tokens/s)
        self.client = openai.AsyncOpenAI(
            base_url=f"{url.rstrip('/')}/v1",
            api_key=_NO_KEY,
            # A legacy httpx client is accepted (typed as httpx2's); its timeouts are kept.
            http_client=cast(Any, http),
            max_retries=0,
        )

    async def aclose(self) -> None:
        await self.client.close()

    async def model_ids(self) -> list[str]:
        """The ids /v1/models lists (the names a chat request takes)."""
        page = await self.client.models.list(extra_headers=_NO_KEY_HEADER)
        return [model.id for model in page.data if model.id]

    async def chat_stream(
        self,
        model: str,
        messages: Sequence[Mapping[str, Any]],
        options: Mapping[str, Any] | None,
        mark_streaming: Callable[[], None],
    ) -> AsyncGenerator[ChatEvent, None]:
        """Stream one reply: TokenDelta events, then one ReplyDone after the stream's end
        (the usage chunk comes after the last piece). `mark_streaming` is called when the
        first chunk arrived (a broken connection then broke off the reply)."""
        stream = await self.client.chat.completions.create(
            model=model,
            messages=openai_messages(messages),
            stream=True,
            stream_options={"include_usage": True},
            extra_headers=_NO_KEY_HEADER,
            **chat_fields(options),
        )
        pieces = 0
        first: float | None = None  # when the first and the last piece came
        last = 0.0
        usage: openai.types.CompletionUsage | None = None
        finish: str | None = None
        # Closing the stream (Stop, or an error) closes the HTTP response: the server
        # sees the client gone and stops generating.
        async with stream:
            async for chunk in stream:
                mark_streaming()
                usage = chunk.usage or usage
                for choice in chunk.choices[:1]:
                    finish = choice.finish_reason or finish
                    text = choice.delta.content if choice.delta else None
                    if text:
                        last = self.clock()
                        first = last if first is None else first
                        pieces += 1
                        yield TokenDelta(text)
        if finish is None:
            raise BackendResponseError("The model backend ended the reply before it was complete.")
        tokens = usage.completion_tokens if usage else pieces
        yield ReplyDone(
            ReplyStats(
                eval_count=tokens,
                prompt_eval_count=usage.prompt_tokens if usage else None,
                done_reason=finish,
                measured_rate=measured_rate(tokens, pieces, first, last),
            )
        )


def measured_rate(tokens: int, pieces: int, first: float | None, last: float) -> float | None:
    """Tokens/s from the stream: the tokens after the first piece over the time from the
    first piece to the last (a piece holds tokens / pieces of them on average)."""
    if first is None or pieces < 2 or last <= first:
        return None
    return tokens * (pieces - 1) / pieces / (last - first)


def chat_fields(options: Mapping[str, Any] | None) -> dict[str, Any]:
    """The request fields for the UI's (Ollama-named) options."""
    fields = {}
    for name, value in (options or {}).items():
        field = OPTION_FIELDS.get(name)
        if field is None:
            logger.debug("option %s has no OpenAI counterpart: not sent", name)
        elif value is not None:
            fields[field] = value
    return fields


def openai_messages(messages: Sequence[Mapping[str, Any]]) -> list[ChatCompletionMessageParam]:
    """The UI's messages (Ollama's shape) as OpenAI chat messages: a message with images
    gets content parts, its text first, then each image as a data URL."""
    converted = []
    for message in messages:
        images = message.get("images") or []
        content: Any = message.get("content") or ""
        if images:
            content = [
                {"type": "text", "text": content},
                *({"type": "image_url", "image_url": {"url": data_url(i)}} for i in images),
            ]
        converted.append({"role": message["role"], "content": content})
    return cast("list[ChatCompletionMessageParam]", converted)


def data_url(image: str | bytes) -> str:
    """A data URL for an image given as base64 (Ollama's `images` entries) or raw bytes."""
    if isinstance(image, bytes):
        raw, encoded = image, base64.b64encode(image).decode()
    else:
        encoded = "".join(image.split())
        try:
            raw = base64.b64decode(encoded[:16] + "=" * (-len(encoded[:16]) % 4))
        except (binascii.Error, ValueError):
            raw = b""
    media = next((kind for magic, kind in _IMAGE_MAGIC if raw.startswith(magic)), "image/png")
    return f"data:{media};base64,{encoded}"
