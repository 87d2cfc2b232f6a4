"""A lean asyncio client for Gradio's queue API (what the browser speaks), for benchmarks.

Why not `gradio_client`: it hands each server message from its SSE reader thread to the
job through a deque polled every 50 ms and deep-copies the whole output on every streamed
diff. That adds up to 50 ms to every measured first token and costs the client CPU that
grows with the reply. This client reads the SSE stream directly and applies Gradio's
diffs in place, so what is measured is the server.

Protocol (Gradio >= 4, `sse_v3`)::

    POST {prefix}/queue/join   {"data", "fn_index", "session_hash", "trigger_id", ...}
                               -> {"event_id"}
    GET  {prefix}/queue/data?session_hash=...   SSE: estimation, process_starts,
         process_generating (first: full outputs, then per-output diff lists),
         process_completed (success, output), heartbeat, close_stream

    async with GradioQueue(url) as gq:
        fn = await gq.fn_index("chat")
        result = await gq.call(fn, [...], on_update=lambda t, outputs: ...)
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

from devtools.testkit.chat_app import is_note, text_of

UpdateCallback = Callable[[float, list[Any]], None]


class GradioCallFailed(RuntimeError):
    """The event ended with success=false (an exception in the handler, queue full, ...)."""


@dataclass
class CallResult:
    outputs: list[Any]
    joined_at: float  # perf_counter when the join request was sent
    started_at: float | None  # process_starts received
    join_answered_at: float = 0.0  # the join request's answer arrived
    stream_opened_at: float = 0.0  # the SSE stream's response headers arrived
    updates: int = 0  # process_generating messages
    finished_at: float = 0.0
    messages: list[str] = field(default_factory=list)  # msg kinds seen, in order


class GradioQueue:
    """One HTTP connection pool; each `call` uses its own session (like one browser tab)."""

    def __init__(
        self,
        base_url: str,
        *,
        timeout: float = 120.0,
        max_connections: int = 400,
        headers: dict[str, str] | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.http = httpx.AsyncClient(
            timeout=httpx.Timeout(timeout, connect=10.0),
            limits=httpx.Limits(max_connections=max_connections, max_keepalive_connections=100),
            headers=headers,
        )
        self._config: dict[str, Any] | None = None

    async def __aenter__(self) -> GradioQueue:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.http.aclose()

    async def config(self) -> dict[str, Any]:
        if self._config is None:
            response = await self.http.get(self.base_url + "/config")
            response.raise_for_status()
            self._config = response.json()
        return self._config

    async def prefix(self) -> str:
        return self.base_url + str((await self.config()).get("api_prefix") or "/gradio_api")

    async def fn_index(self, api_name: str) -> int:
        """The dependency id of the event with this api_name (e.g. "chat", "prewarm")."""
        deps = (await self.config())["dependencies"]
        for i, dep in enumerate(deps):
            if dep.get("api_name") == api_name:
                return int(dep.get("id", i))
        names = sorted(str(d.get("api_name")) for d in deps)
        raise KeyError(f"the app has no event named {api_name!r}; it has {names}")

    async def call(
        self,
        fn_index: int,
        data: list[Any],
        *,
        on_update: UpdateCallback | None = None,
        session_hash: str | None = None,
    ) -> CallResult:
        """Run one event to completion. `on_update(t, outputs)` is called with
        perf_counter time and the current outputs (mutated in place: copy what you keep)."""
        prefix = await self.prefix()
        session = session_hash or uuid.uuid4().hex[:11]
        joined_at = time.perf_counter()
        body = {"data": data, "fn_index": fn_index, "session_hash": session,
                "trigger_id": None, "event_data": None}  # fmt: skip
        response = await self.http.post(prefix + "/queue/join", json=body)
        if response.status_code != 200:
            raise GradioCallFailed(f"join answered {response.status_code}: {response.text}")
        event_id = response.json()["event_id"]
        result = CallResult(outputs=[], joined_at=joined_at, started_at=None)
        result.join_answered_at = time.perf_counter()
        current: list[Any] | None = None
        async with self.http.stream(
            "GET", prefix + "/queue/data", params={"session_hash": session}
        ) as stream:
            stream.raise_for_status()
            result.stream_opened_at = time.perf_counter()
            async for line in stream.aiter_lines():
                if not line.startswith("data:"):
                    continue
                message = json.loads(line[5:])
                if message.get("event_id") not in (None, event_id):
                    continue
                kind = message.get("msg")
                result.messages.append(kind)
                if kind == "process_starts":
                    result.started_at = time.perf_counter()
                elif kind == "process_generating":
                    now = time.perf_counter()
                    output = message["output"]
                    if not message.get("success", True):
                        raise GradioCallFailed(str(output))
                    payload = output.get("data", [])
                    if current is None:
                        current = payload
                    else:
                        for i, diff in enumerate(payload):
                            current[i] = apply_diff_in_place(current[i], diff)
                    result.updates += 1
                    if on_update is not None:
                        on_update(now, current)
                elif kind == "process_completed":
                    result.finished_at = time.perf_counter()
                    output = message.get("output") or {}
                    if not message.get("success", False):
                        raise GradioCallFailed(str(output.get("error") or output))
                    # A generator's final message repeats the last outputs.
                    final = output.get("data")
                    result.outputs = final if final is not None else (current or [])
                    return result
                elif kind in ("unexpected_error", "close_stream"):
                    raise GradioCallFailed(f"{kind}: {message}")
        raise GradioCallFailed("the event stream ended before the event completed")


def apply_diff_in_place(target: Any, diff: list[Any]) -> Any:
    """Apply one of Gradio's diff lists ([action, path, value], ...) without copying."""
    for action, path, value in diff:
        if not path:
            if action == "replace":
                target = value
            elif action == "append":
                target = target + value
            else:
                raise ValueError(f"unsupported root action {action!r}")
            continue
        parent = target
        for key in path[:-1]:
            parent = parent[key]
        last = path[-1]
        if action == "replace":
            parent[last] = value
        elif action == "append":
            parent[last] += value
        elif action == "add":
            if isinstance(parent, list):
                parent.insert(int(last), value)
            else:
                parent[last] = value
        elif action == "delete":
            del parent[int(last) if isinstance(parent, list) else last]
        else:
            raise ValueError(f"unknown diff action {action!r}")
    return target


# --- reading the chat outputs ---------------------------------------------------------------
def reply_text(history: Any) -> str:
    """The last assistant reply in a Chatbot value (stats and error notes left out)."""
    if not isinstance(history, list):
        return ""
    for message in reversed(history):
        if isinstance(message, dict) and message.get("role") == "assistant":
            if is_note(message):
                continue
            return text_of(message)
        if isinstance(message, dict) and message.get("role") == "user":
            return ""
    return ""


def last_note(history: Any) -> str:
    if not isinstance(history, list):
        return ""
    for message in reversed(history):
        if isinstance(message, dict) and is_note(message):
            return str(message["metadata"]["title"]) + "\n" + text_of(message)
    return ""
