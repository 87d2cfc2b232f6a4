"""The `ollama` package's wire types that it does not export, in one place.

The engine answers with the `ollama` package's own pydantic types, so its JSON is what the
official client reads (ui/backend_access/client.py uses that client). Most are exported
(`ollama.ChatResponse`, `ollama.ListResponse`, ...); these three live only in its private
`ollama._types` module: the request body of /api/chat, a model's details, and the base class
that `_json` dumps. tests/test_compat_ollama.py fails, naming the installed version, when
the pinned release (uv.lock) moves or changes them.
"""

from __future__ import annotations

from ollama._types import ChatRequest, ModelDetails, SubscriptableBaseModel

__all__ = ["ChatRequest", "ModelDetails", "SubscriptableBaseModel"]
