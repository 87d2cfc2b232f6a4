"""Benchmark: what the UI adds to a reply, against the same backend called directly.

The UI (`python -m ui`, its own process) in front of a backend. The same prompt and sampling
(temperature 0, so greedy and deterministic) go once directly (the official `ollama` client,
streaming) and once through the UI's /chat endpoint, interleaved (direct, UI, direct, ...)
so machine noise hits both sides alike. Both sides are timed from the client: time to first
token (request sent -> first text), and tokens/s from the growth of the text (tokens after
the first / time from the first to the last text growth). Paired medians are printed, and
the UI process's CPU per reply.

Four set-ups:
1. the real local engine (`python -m backend`, one slot) on every core. It is a CPU
   engine, so on this machine the UI's own CPU use is taken from the engine: the tokens/s
   ratio measures that sharing as well as the relay;
2. the same engine on a core of its own (taskset, one thread), the UI and the clients on
   the other core: as in production, where the model runs in another service, the UI
   cannot slow the engine down, so what is left is the relay itself;
3. a GPU-like backend (bench/synthetic_ollama.py: fixed token rate, its own core, the UI
   pinned to the other): the relay at a GPU's token rate;
4. the OpenAI-compatible kind (LLM_BACKEND_API=openai): llama-cpp-python's own server on the
   same smollm2 GGUF, on a core of its own with one thread like set-up 2, called directly
   with the official `openai` client; the summary sets its added TTFT and tokens/s ratio
   beside set-up 2's (the Ollama kind), measured in the same run.

Clients for the UI side:
- `queue API`: a lean client of Gradio's queue API (bench/gradio_queue.py), what the
  browser does; this is the measurement the goals apply to;
- `gradio_client` (optional row, --gradio-client): the official client, whose SSE reader
  hands messages to the job through a queue polled every 50 ms, so it adds up to 50 ms to
  what it sees (shown for reference, not a property of the UI).

Goals: UI >= 0.98 x direct tokens/s; added TTFT p50 <= 20 ms.

    .venv/bin/python -m bench.relay_overhead [--runs 9] [--tokens 128] [--model smollm2:135m]
                                             [--gradio-client] [--gpu-like-rate 100]
                                             [--no-openai]
"""

from __future__ import annotations

import argparse
import asyncio
import re
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import ollama
import openai
from gradio_client import Client

from backend.engine import usable_cores
from bench.common import (
    load_note,
    median,
    pin_self,
    process_cpu,
    start_synthetic,
    start_ui,
    table,
)
from bench.gradio_queue import GradioQueue, last_note, reply_text
from bench.synthetic_ollama import MODEL as MODEL_GPU_LIKE
from devtools.testkit.openai_servers import LLAMA_CPP_MODEL, start_llama_cpp_server
from devtools.testkit.procs import Proc, start_engine

PROMPT = "Write a short story about a lighthouse keeper who finds a message in a bottle."


@dataclass
class Run:
    ttft_s: float
    tokens_per_s: float
    tokens: int
    text: str


def rate(tokens: int, first: float, last: float) -> float:
    return (tokens - 1) / (last - first) if tokens > 1 and last > first else float("nan")


def options(tokens: int) -> dict[str, Any]:
    # What the UI sends for these slider values (no seed: temperature 0 is greedy).
    return {"temperature": 0.0, "top_p": 0.9, "num_predict": tokens}


def run_direct(url: str, model: str, tokens: int) -> Run:
    client = ollama.Client(host=url, timeout=300)
    t0 = time.perf_counter()
    first = last = 0.0
    text = ""
    count = 0
    for part in client.chat(
        model=model, messages=[{"role": "user", "content": PROMPT}], options=options(tokens),
        stream=True,
    ):  # fmt: skip
        piece = part.message.content if part.message else ""
        if piece:
            last = time.perf_counter()
            first = first or last
            text += piece
        if part.done:
            count = int(part.eval_count or 0)
    return Run(first - t0, rate(count, first, last), count, text)


def run_direct_openai(url: str, model: str, tokens: int) -> Run:
    """The same request to an OpenAI-compatible server, with the official client; the
    tokens are the stream's pieces, as the UI counts them when no usage comes."""
    client = openai.OpenAI(base_url=url + "/v1", api_key="not-used", max_retries=0, timeout=300)
    t0 = time.perf_counter()
    first = last = 0.0
    text = ""
    count = 0
    stream = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": PROMPT}], stream=True,
        temperature=0.0, top_p=0.9, max_tokens=tokens,
    )  # fmt: skip
    for chunk in stream:
        piece = chunk.choices[0].delta.content if chunk.choices else None
        if piece:
            last = time.perf_counter()
            first = first or last
            text += piece
            count += 1
    client.close()
    return Run(first - t0, rate(count, first, last), count, text)


Direct = Callable[[str, str, int], Run]


def eval_count(history: Any) -> int:
    match = re.search(r"(\d+) tokens? generated", last_note(history))
    if not match:
        raise RuntimeError(f"no token count in the UI's stats note: {last_note(history)!r}")
    return int(match.group(1))


def chat_inputs(model: str, tokens: int) -> list[Any]:
    return [PROMPT, [], model, "", 0.0, 0.9, tokens]


async def run_ui(
    gq: GradioQueue, fn: int, model: str, tokens: int, session: str | None = None
) -> Run:
    seen = {"len": 0, "first": 0.0, "last": 0.0}

    def on_update(now: float, outputs: list[Any]) -> None:
        length = len(reply_text(outputs[1]))
        if length > seen["len"]:
            seen["len"], seen["last"] = length, now
            seen["first"] = seen["first"] or now

    result = await gq.call(
        fn, chat_inputs(model, tokens), on_update=on_update, session_hash=session
    )
    history = result.outputs[1]
    count = eval_count(history)
    return Run(
        seen["first"] - result.joined_at, rate(count, seen["first"], seen["last"]), count,
        reply_text(history),
    )  # fmt: skip


def run_gradio_client(client: Client, model: str, tokens: int) -> Run:
    t0 = time.perf_counter()
    job = client.submit(*chat_inputs(model, tokens), api_name="/chat")
    first = last = 0.0
    length = 0
    while not job.done():
        outputs = job.outputs()
        if outputs:
            now = time.perf_counter()
            grown = len(reply_text(outputs[-1][1]))
            if grown > length:
                length, last = grown, now
                first = first or now
        time.sleep(0.002)
    history = job.result(timeout=60)[1]
    if len(reply_text(history)) > length:
        last = time.perf_counter()
    count = eval_count(history)
    return Run(first - t0, rate(count, first, last), count, reply_text(history))


@dataclass
class Section:
    title: str
    kind: str  # the API the UI spoke to the backend
    backend: str  # what served it
    direct_label: str
    direct: list[Run]
    lean: list[Run]
    official: list[Run]
    ui_cpu_ms: float  # the UI process's CPU per reply (median)


async def measure(
    section: Section, direct: Direct, backend_url: str, ui_url: str, ui_pid: int, model: str,
    args: argparse.Namespace,
) -> Section:  # fmt: skip
    cpu: list[float] = []
    async with GradioQueue(ui_url) as gq:
        fn = await gq.fn_index("chat")
        # One page: the session exists from the page load on, as for a user in a browser.
        session = uuid.uuid4().hex[:11]
        await gq.call(await gq.fn_index("page_load"), [], session_hash=session)
        await run_ui(gq, fn, model, 8, session)  # load the model, warm the code paths
        direct(backend_url, model, 8)
        for _ in range(args.runs):  # interleaved: direct, UI, direct, UI, ...
            section.direct.append(direct(backend_url, model, args.tokens))
            before = process_cpu(ui_pid)
            section.lean.append(await run_ui(gq, fn, model, args.tokens, session))
            cpu.append((process_cpu(ui_pid).cpu_s - before.cpu_s) * 1000)
    section.ui_cpu_ms = median(cpu)
    if args.gradio_client:
        client = Client(ui_url, verbose=False)
        run_gradio_client(client, model, 8)
        for _ in range(args.runs):
            section.direct.append(direct(backend_url, model, args.tokens))
            section.official.append(run_gradio_client(client, model, args.tokens))
        client.close()
    return section


def report(section: Section, runs: int) -> tuple[float, float]:
    """Print the section's table; return (added TTFT ms, tokens/s ratio) of the queue API."""
    direct, lean, official = section.direct, section.lean, section.official
    same = all(d.text == u.text for d, u in zip(direct, lean + official, strict=True))
    ttft_d = median([r.ttft_s for r in direct]) * 1000
    tps_d = median([r.tokens_per_s for r in direct])
    rows: list[list[object]] = [[f"backend directly ({section.direct_label})", f"{ttft_d:.1f}",
                                 "", f"{tps_d:.1f}", ""]]  # fmt: skip
    results: dict[str, tuple[float, float]] = {}
    pairs = {
        "through the UI (queue API)": (direct[: len(lean)], lean),
        "through the UI (gradio_client)": (direct[len(lean) :], official),
    }
    for label, (base, ui_runs) in pairs.items():
        if not ui_runs:
            continue
        # Paired: each UI run against the direct run just before it.
        added = median([(u.ttft_s - d.ttft_s) * 1000 for d, u in zip(base, ui_runs, strict=True)])
        ratio = median(
            [u.tokens_per_s / d.tokens_per_s for d, u in zip(base, ui_runs, strict=True)]
        )
        results[label] = (added, ratio)
        ttft = median([r.ttft_s for r in ui_runs]) * 1000
        tps = median([r.tokens_per_s for r in ui_runs])
        rows.append([label, f"{ttft:.1f}", f"{added:+.1f}", f"{tps:.1f}", f"**{ratio:.3f}**"])
    tokens = median([r.tokens for r in direct])
    print(f"\n### {section.title}: ~{tokens:.0f} tokens, {runs} interleaved runs, medians\n")
    print(
        f"({load_note()}; same reply text on both sides: {'yes' if same else 'NO'}; "
        f"UI CPU per reply {section.ui_cpu_ms:.0f} ms)\n"
    )
    print(table(
        ["path", "TTFT ms", "added TTFT ms (paired median)", "tokens/s",
         "tokens/s ratio to direct (paired median)"],
        rows,
    ))  # fmt: skip
    added, ratio = results["through the UI (queue API)"]
    print(
        f"\nGoal UI >= 0.98 x direct tokens/s: {'met' if ratio >= 0.98 else 'NOT met'} "
        f"({ratio:.3f}); added TTFT p50 <= 20 ms: {'met' if added <= 20 else 'NOT met'} "
        f"({added:+.1f} ms)"
    )
    return added, ratio


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=9)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--model", default="smollm2:135m")
    parser.add_argument("--gradio-client", action="store_true", help="add a gradio_client row")
    parser.add_argument(
        "--gpu-like-rate", type=float, default=100.0,
        help="tokens/s of the GPU-like synthetic backend (0: skip that part)",
    )  # fmt: skip
    parser.add_argument(
        "--no-openai", action="store_true", help="skip the OpenAI-compatible kind (set-up 4)"
    )
    args = parser.parse_args()
    sections: list[Section] = []

    def through_ui(
        title: str, backend: Proc, backend_url: str, model: str, ui_cpu: int | None,
        kind: str = "ollama", served_by: str = "the engine (python -m backend)",
    ) -> None:  # fmt: skip
        """Start a UI in front of `backend`, measure, stop both."""
        ui = None
        direct, label = (
            (run_direct_openai, "openai client") if kind == "openai"
            else (run_direct, "ollama client")
        )  # fmt: skip
        try:
            ui, ui_url = start_ui(
                backend_url, cpu=ui_cpu, name="bench-relay-ui", LLM_BACKEND_API=kind
            )
            section = Section(title, kind, served_by, label, [], [], [], 0.0)
            sections.append(
                asyncio.run(
                    measure(section, direct, backend_url, ui_url, ui.popen.pid, model, args)
                )
            )
        finally:
            if ui is not None:
                ui.stop()
            backend.stop()

    # 1. The real CPU engine. It uses every core, so whatever CPU the UI spends is taken
    #    from the engine: on this machine the ratio also measures that sharing.
    engine, engine_url = start_engine(None, "--num-parallel", "1", name="bench-relay-engine")
    title = f"Relay overhead, real engine ({args.model}, temperature 0, cores shared)"
    through_ui(title, engine, engine_url, args.model, None)

    # 2. The same engine on a core of its own; the UI and this process on the other.
    cores = usable_cores()
    if cores >= 2:
        pin_self({0})
        engine, engine_url = start_engine(
            None, "--num-parallel", "1", name="bench-relay-engine", cpu=cores - 1
        )
        title = (
            f"Relay overhead, real engine on its own core ({args.model}, one thread; "
            "UI and clients on core 0)"
        )
        through_ui(title, engine, engine_url, args.model, 0)

    # 3. A GPU-like backend on its own core: a fixed token rate that the UI's CPU use
    #    cannot slow down, so what is left is the relay itself.
    if args.gpu_like_rate > 0:
        pin_self({cores - 1})
        backend, backend_url = start_synthetic(
            rate=args.gpu_like_rate, first_token_delay=0.02, cpu=cores - 1
        )
        title = (
            f"Relay overhead, GPU-like backend ({args.gpu_like_rate:g} tokens/s, "
            "UI on its own core)"
        )
        through_ui(title, backend, backend_url, MODEL_GPU_LIKE, 0)

    # 4. The OpenAI-compatible kind: llama-cpp-python's server on the same GGUF, on a core
    #    of its own with one thread, as the engine in set-up 2.
    if not args.no_openai and cores >= 2:
        pin_self({0})
        server, server_url = start_llama_cpp_server(name="bench-relay-llama-cpp", cpu=cores - 1)
        title = (
            f"Relay overhead, OpenAI-compatible kind (llama-cpp-python's server, "
            f"{LLAMA_CPP_MODEL}, its own core, one thread; UI and clients on core 0)"
        )
        through_ui(
            title, server, server_url, LLAMA_CPP_MODEL, 0, kind="openai",
            served_by="llama-cpp-python's server (python -m llama_cpp.server)",
        )  # fmt: skip

    results = [(section, report(section, args.runs)) for section in sections]
    own_core = [(s, r) for s, r in results if "own core" in s.title]
    if len(own_core) > 1:
        print("\n### Per backend kind (backend on its own core, same run)\n")
        print(table(
            ["backend kind (LLM_BACKEND_API)", "backend", "added TTFT ms (paired median)",
             "tokens/s ratio to direct (paired median)"],
            [[s.kind, s.backend, f"{added:+.1f}", f"{ratio:.3f}"]
             for s, (added, ratio) in own_core],
        ))  # fmt: skip
    sys.exit(0)


if __name__ == "__main__":
    main()
