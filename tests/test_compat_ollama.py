"""The `ollama` internals the engine and the synthetic backend use (backend/ollama_types.py)
still exist and behave as used, in the pinned release. When this fails after `make lock`,
the new release moved or changed them: adapt backend/ollama_types.py, not its callers."""

from __future__ import annotations

import importlib.metadata

import ollama

from backend.ollama_types import ChatRequest, ModelDetails, SubscriptableBaseModel

VERSION = importlib.metadata.version("ollama")


def test_the_chat_request_body_parses_as_the_engine_reads_it() -> None:
    body = b'{"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": false,'
    body += b' "options": {"temperature": 0.1}, "keep_alive": "5m"}'
    chat = ChatRequest.model_validate_json(body)
    assert (chat.model, chat.stream, chat.keep_alive) == ("m", False, "5m"), VERSION
    assert chat.options == {"temperature": 0.1}, f"ollama {VERSION} changed ChatRequest.options"
    assert chat.messages is not None and chat.messages[0]["content"] == "hi", VERSION


def test_model_details_dump_to_ollamas_json_and_fit_the_public_types() -> None:
    details = ModelDetails(family="gemma3", parameter_size="270M", quantization_level="Q4_K_M")
    assert isinstance(details, SubscriptableBaseModel), f"ollama {VERSION} changed the base"
    dumped = details.model_dump(mode="json", exclude_none=True, by_alias=True)
    assert dumped == {
        "family": "gemma3",
        "parameter_size": "270M",
        "quantization_level": "Q4_K_M",
    }, f"ollama {VERSION} changed ModelDetails"
    listed = ollama.ListResponse.Model(model="gemma3:270m", details=details)
    assert listed.details == details, f"ollama {VERSION}: ListResponse no longer takes them"
    assert issubclass(ollama.ChatResponse, SubscriptableBaseModel), VERSION
