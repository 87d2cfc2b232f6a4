"""The peer the benchmarks compare against: the plain `gr.ChatInterface` that any Gradio
user would write in twenty lines, streaming from the same Ollama-API backend with the
official `ollama` client (no auth, no status, no limits, Gradio's default theme).

    .venv/bin/python -m bench.plain_chat --backend http://127.0.0.1:11434 --port 7861
        [--model smollm2:135m] [--num-predict N]

`--num-predict` (a reply's length in tokens) lets a benchmark ask for the same replies as it
asks of this app; without it the peer sends no options, as the twenty-line version would.
"""

from __future__ import annotations

import argparse
from collections.abc import AsyncIterator

import gradio as gr
import ollama


def build_plain_chat(
    backend_url: str, model: str, num_predict: int | None = None
) -> gr.ChatInterface:
    client = ollama.AsyncClient(host=backend_url)
    options = {"num_predict": num_predict} if num_predict else None

    async def respond(message: str, history: list[dict[str, str]]) -> AsyncIterator[str]:
        messages = [{"role": m["role"], "content": m["content"]} for m in history]
        messages.append({"role": "user", "content": message})
        reply = ""
        stream = await client.chat(model=model, messages=messages, stream=True, options=options)
        async for part in stream:
            reply += part.message.content or ""
            yield reply

    return gr.ChatInterface(respond, title="Plain ChatInterface")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", required=True, help="Ollama-API base URL")
    parser.add_argument("--port", type=int, default=7861)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--model", default="smollm2:135m")
    parser.add_argument("--num-predict", type=int, default=None, help="reply length, tokens")
    parser.add_argument(
        "--concurrency",
        type=int,
        default=200,
        help="the event's concurrency limit (Gradio's default is 1)",
    )
    args = parser.parse_args()
    demo = build_plain_chat(args.backend, args.model, args.num_predict)
    demo.queue(default_concurrency_limit=args.concurrency, max_size=400)
    demo.launch(server_name=args.host, server_port=args.port, show_error=False)


if __name__ == "__main__":
    main()
