"""Benchmark: many simultaneous streaming chats through one UI process on one core.

The UI (`python -m ui`, pinned to one core with taskset) streams from a synthetic
Ollama-API backend (bench/synthetic_ollama.py: fixed token rate per stream, fixed reply
length, on the other core), so the UI is what is measured. The clients run in this process
(also off the UI's core) and speak Gradio's queue API the way the browser does
(bench/gradio_queue.py); each first opens its page (the page's one load event), like a
user who opened the page and then typed. Their own CPU use is printed: they must not be
the bottleneck.

Two arrival patterns per N:

- burst: all N messages sent at the same instant (short replies), the worst case for
  time to first token: every request's setup competes for the one core at once;
- staggered: N messages spread evenly over `--window` seconds with long replies, so all N
  stream together for most of the run (steady-state concurrency).

For each: N direct streams to the backend with the same pattern (its own first-token time
under the same load), then N chats through the UI. Reported: added time to first token
(UI minus direct median, p50/p95), p95 and max gap between UI updates of a stream, the
slowest stream's delivery rate against the backend's, aggregate tokens/s delivered, the
UI's CPU (share of its one core, CPU ms per token) and memory, the client's CPU.

The same burst and staggered rounds then run against the peer, a plain `gr.ChatInterface`
(bench/plain_chat.py) pinned to the same core in front of the same backend. Its browser runs
three chained events per message (save and clear the box, show the message, stream the
reply); the first and the last are sent here (the reply streams from what the first saved
in the session), and its time to first token counts from the first.

A last table follows N long replies over time: if the UI re-sent or re-processed the whole
history on every token, its CPU per token would grow as the replies grow.

Goal: 80 streams on one core with p95 added TTFT <= 300 ms and no stream starved.

    .venv/bin/python -m bench.concurrency [--streams 10,40,80] [--rate 50] [--tokens 100]
        [--long-tokens 400] [--window 2] [--growth-streams 20] [--growth-tokens 800]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import httpx

from backend.engine import usable_cores
from bench.common import (
    CpuSample,
    cpu_share,
    load_note,
    median,
    pct,
    pin_self,
    process_cpu,
    rss_mb,
    start_plain_chat,
    start_synthetic,
    start_ui,
    table,
)
from bench.gradio_queue import GradioQueue, reply_text
from bench.synthetic_ollama import MODEL, TOKEN_TEXT

STARVED_GAP_S = 1.0  # a stream that got no update for this long while replying is starved
T = TypeVar("T")


@dataclass
class StreamResult:
    ttft_s: float
    total_s: float
    tokens: int  # reply length in tokens (synthetic tokens are TOKEN_TEXT each)
    gaps_s: list[float] = field(default_factory=list)  # between updates that grew the reply
    first_at: float = 0.0
    last_at: float = 0.0

    @property
    def rate(self) -> float:
        """Tokens/s as the client saw them arrive (first to last token)."""
        span = self.last_at - self.first_at
        return (self.tokens - 1) / span if span > 0 and self.tokens > 1 else float("nan")


async def direct_stream(http: httpx.AsyncClient, url: str, tokens: int) -> StreamResult:
    body = {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "stream": True,
            "options": {"num_predict": tokens, "temperature": 0.7, "top_p": 0.9}}  # fmt: skip
    t0 = time.perf_counter()
    first = last = 0.0
    count = 0
    gaps: list[float] = []
    async with http.stream("POST", url + "/api/chat", json=body) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            chunk = json.loads(line)
            if chunk.get("done"):
                break
            now = time.perf_counter()
            if count == 0:
                first = now
            else:
                gaps.append(now - last)
            last = now
            count += 1
    return StreamResult(first - t0, last - t0, count, gaps, first, last)


@dataclass(frozen=True)
class ChatApp:
    """How a client chats with an app through its queue: the streaming event's function
    name and inputs, where the conversation is among its outputs, the event a fresh page
    sends first and the one a message sends before the stream (None: none)."""

    label: str
    chat_fn: str
    inputs: Callable[[int], list[Any]]  # reply tokens -> the event's inputs
    load_fn: str | None
    sets_length: bool = True  # the inputs set the reply's length
    before_fn: str | None = None  # called with the message, in the same session


THIS_APP = ChatApp(
    "this app", "chat", lambda tokens: ["Hi", [], MODEL, "", 0.7, 0.9, tokens], "page_load"
)
# The reply's length is set when the peer starts (bench/plain_chat.py --num-predict).
# Its stream reads the message and history from the session's state (gr.State inputs are
# the server's copy), which the box's submit event saved first.
PLAIN_CHAT = ChatApp(
    "plain ChatInterface", "_submit_fn", lambda _: [None, None], None,
    sets_length=False, before_fn="_clear_and_save_textbox",
)  # fmt: skip


async def open_page(gq: GradioQueue, app: ChatApp) -> str:
    """What a browser tab does on load (this app: the page's one load event), so the
    session exists before the measured chat. Returns the session hash."""
    session = uuid.uuid4().hex[:11]
    if app.load_fn is not None:
        await gq.call(await gq.fn_index(app.load_fn), [], session_hash=session)
    return session


async def ui_stream(
    gq: GradioQueue, app: ChatApp, fn: int, tokens: int, session: str | None = None
) -> StreamResult:
    state = {"len": 0, "first": 0.0, "last": 0.0}
    gaps: list[float] = []

    def on_update(now: float, outputs: list[Any]) -> None:
        length = len(reply_text(outputs[1]))
        if length > state["len"]:
            if state["len"] == 0:
                state["first"] = now
            else:
                gaps.append(now - state["last"])
            state["last"] = now
            state["len"] = length

    sent_at = time.perf_counter()
    if app.before_fn is not None:
        await gq.call(await gq.fn_index(app.before_fn), ["Hi"], session_hash=session)
    result = await gq.call(fn, app.inputs(tokens), on_update=on_update, session_hash=session)
    got = len(reply_text(result.outputs[1])) // len(TOKEN_TEXT)
    if got != tokens:
        raise RuntimeError(f"a stream delivered {got} of {tokens} tokens: {result.outputs}")
    t0 = sent_at if app.before_fn is not None else result.joined_at
    return StreamResult(
        state["first"] - t0, result.finished_at - t0, got, gaps, state["first"], state["last"]
    )


async def staggered(n: int, window: float, start: Callable[[int], Awaitable[T]]) -> list[T]:
    """Start `start(i)` for i < n, spread evenly over `window` seconds (0: all at once)."""

    async def later(i: int) -> T:
        await asyncio.sleep(window * i / n if window > 0 else 0.0)
        return await start(i)

    return list(await asyncio.gather(*(later(i) for i in range(n))))


@dataclass
class Round:
    app: str
    n: int
    tokens: int
    window: float
    direct: list[StreamResult]
    ui: list[StreamResult]
    wall_s: float
    ui_cpu: float  # share of one core
    ui_cpu_s: float
    ui_rss_mb: float
    client_cpu: float
    backend_late_p99_ms: float

    @property
    def added_ttft_ms(self) -> tuple[float, float]:
        base = median([r.ttft_s for r in self.direct])
        added = [(r.ttft_s - base) * 1000 for r in self.ui]
        return pct(added, 0.5), pct(added, 0.95)

    @property
    def gap_ms(self) -> tuple[float, float]:
        gaps = [g * 1000 for r in self.ui for g in r.gaps_s]
        return pct(gaps, 0.95), max(gaps, default=float("nan"))

    @property
    def starved(self) -> int:
        return sum(1 for r in self.ui if max(r.gaps_s, default=0.0) > STARVED_GAP_S)

    @property
    def slowest_rate_ratio(self) -> float:
        return min(r.rate for r in self.ui) / median([r.rate for r in self.direct])

    @property
    def aggregate_tps(self) -> float:
        return sum(r.tokens for r in self.ui) / self.wall_s

    @property
    def cpu_ms_per_token(self) -> float:
        return self.ui_cpu_s * 1000 / sum(r.tokens for r in self.ui)

    @property
    def goal_met(self) -> bool:
        return self.added_ttft_ms[1] <= 300 and self.starved == 0

    def row(self) -> list[object]:
        p50, p95 = self.added_ttft_ms
        gap95, gapmax = self.gap_ms
        return [
            self.app, self.n, f"{median([d.ttft_s for d in self.direct]) * 1000:.0f}", f"{p50:.0f}",
            f"{p95:.0f}", f"{gap95:.0f}", f"{gapmax:.0f}", f"{self.slowest_rate_ratio:.2f}",
            self.starved, f"{self.aggregate_tps:.0f}", f"{self.ui_cpu * 100:.0f} %",
            f"{self.cpu_ms_per_token:.2f}", f"{self.ui_rss_mb:.0f}",
            f"{self.client_cpu * 100:.0f} %", f"{self.backend_late_p99_ms:.1f}",
        ]  # fmt: skip


ROUND_HEADERS = [
    "app", "streams", "backend TTFT ms", "added TTFT p50 ms", "added TTFT p95 ms",
    "update gap p95 ms", "max gap ms", "slowest stream / backend rate", "starved",
    "tokens/s delivered", "UI CPU (1 core)", "UI CPU ms/token", "UI RSS MB", "client CPU",
    "backend late p99 ms",
]  # fmt: skip


def self_cpu() -> CpuSample:
    return process_cpu(os.getpid())


async def run_round(
    ui_url: str, backend_url: str, ui_pid: int, n: int, tokens: int, window: float,
    app: ChatApp = THIS_APP,
) -> Round:  # fmt: skip
    limits = httpx.Limits(max_connections=n + 10)
    async with httpx.AsyncClient(timeout=httpx.Timeout(120.0), limits=limits) as http:
        direct = await staggered(n, window, lambda _: direct_stream(http, backend_url, tokens))
    async with GradioQueue(ui_url, max_connections=2 * n + 10) as gq:
        fn = await gq.fn_index(app.chat_fn)
        sessions = await asyncio.gather(*(open_page(gq, app) for _ in range(n)))
        warm = 4 if app.sets_length else tokens
        await ui_stream(gq, app, fn, warm, sessions[0])  # warm the code paths
        ui_before, me_before = process_cpu(ui_pid), self_cpu()
        started = time.perf_counter()
        ui = await staggered(n, window, lambda i: ui_stream(gq, app, fn, tokens, sessions[i]))
        wall = time.perf_counter() - started
        ui_after, me_after = process_cpu(ui_pid), self_cpu()
    async with httpx.AsyncClient(timeout=10.0) as http:
        stats = (await http.get(backend_url + "/_synthetic/stats")).json()
    return Round(
        app.label, n, tokens, window, direct, ui, wall,
        cpu_share(ui_before, ui_after), ui_after.cpu_s - ui_before.cpu_s, rss_mb(ui_pid),
        cpu_share(me_before, me_after), float(stats["late_p99_ms"]),
    )  # fmt: skip


@dataclass
class GrowthWindow:
    reply_tokens: tuple[int, int]  # reply length at the window's start and end
    cpu_share: float
    cpu_ms_per_token: float


async def run_growth(
    ui_url: str, ui_pid: int, n: int, tokens: int, rate: float, windows: int = 4
) -> list[GrowthWindow]:
    """N long replies started together; the UI's CPU per token in consecutive windows of
    the replies (by elapsed time, so by reply length)."""
    async with GradioQueue(ui_url, max_connections=2 * n + 10) as gq:
        fn = await gq.fn_index("chat")
        sessions = await asyncio.gather(*(open_page(gq, THIS_APP) for _ in range(n)))
        samples: list[CpuSample] = []
        streams = asyncio.gather(*(ui_stream(gq, THIS_APP, fn, tokens, s) for s in sessions))
        started = time.perf_counter()
        span = tokens / rate
        for k in range(windows + 1):  # sample at the window edges
            await asyncio.sleep(max(0.0, started + span * k / windows - time.perf_counter()))
            samples.append(process_cpu(ui_pid))
        await streams
    per_window = tokens / windows
    return [
        GrowthWindow(
            (round(per_window * k), round(per_window * (k + 1))),
            cpu_share(samples[k], samples[k + 1]),
            (samples[k + 1].cpu_s - samples[k].cpu_s) * 1000 / (per_window * n),
        )
        for k in range(windows)
    ]


@dataclass
class HistoryCost:
    messages: int
    updates: int
    cpu_ms: float
    wall_s: float


async def run_history(
    ui_url: str, ui_pid: int, lengths: list[int], tokens: int, chars: int = 400
) -> list[HistoryCost]:
    """One reply after a chat of N messages (`chars` each): the UI's CPU for that reply.
    Gradio re-processes the whole Chatbot value on every update."""
    results = []
    async with GradioQueue(ui_url) as gq:
        fn = await gq.fn_index("chat")
        session = await open_page(gq, THIS_APP)
        for n in lengths:
            history = [
                {"role": "user" if i % 2 == 0 else "assistant",
                 "content": [{"type": "text", "text": "x" * chars}]}
                for i in range(n)
            ]  # fmt: skip
            before = process_cpu(ui_pid)
            t0 = time.perf_counter()
            data = ["Hi", history, MODEL, "", 0.7, 0.9, tokens]
            result = await gq.call(fn, data, session_hash=session)
            wall = time.perf_counter() - t0
            cpu = (process_cpu(ui_pid).cpu_s - before.cpu_s) * 1000
            results.append(HistoryCost(n, result.updates, cpu, wall))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--streams", default="10,40,80", help="comma-separated N values")
    parser.add_argument("--rate", type=float, default=50.0, help="backend tokens/s per stream")
    parser.add_argument("--first-token-delay", type=float, default=0.02, help="backend, s")
    parser.add_argument("--tokens", type=int, default=100, help="reply length, burst rounds")
    parser.add_argument("--long-tokens", type=int, default=400, help="staggered rounds")
    parser.add_argument("--window", type=float, default=2.0, help="staggered arrivals, s")
    parser.add_argument("--growth-streams", type=int, default=20)
    parser.add_argument("--growth-tokens", type=int, default=800)
    parser.add_argument("--ui-cpu", type=int, default=0, help="core the UI is pinned to")
    parser.add_argument(
        "--ui-env", action="append", default=[], help="extra VAR=value for the UI process"
    )
    args = parser.parse_args()
    counts = [int(x) for x in args.streams.split(",") if x.strip()]
    cores = usable_cores()
    other = {c for c in range(cores) if c != args.ui_cpu} or {args.ui_cpu}
    pin_self(other)  # the clients and the backend stay off the UI's core
    backend, backend_url = start_synthetic(
        rate=args.rate, first_token_delay=args.first_token_delay, cpu=min(other)
    )
    extra = dict(item.split("=", 1) for item in args.ui_env)
    ui, ui_url = start_ui(backend_url, cpu=args.ui_cpu, **extra)
    pid = ui.popen.pid
    try:
        idle_before = process_cpu(pid)
        time.sleep(3.0)  # nobody connected: what the UI process costs by itself
        idle_share = cpu_share(idle_before, process_cpu(pid))
        burst = [
            asyncio.run(run_round(ui_url, backend_url, pid, n, args.tokens, 0.0)) for n in counts
        ]
        steady = [
            asyncio.run(run_round(ui_url, backend_url, pid, n, args.long_tokens, args.window))
            for n in counts
        ]
        growth = asyncio.run(
            run_growth(ui_url, pid, args.growth_streams, args.growth_tokens, args.rate)
        )
        history = asyncio.run(run_history(ui_url, pid, [0, 40, 100, 500], args.long_tokens // 2))
        ui.stop()
        for tokens, window, rounds in (
            (args.tokens, 0.0, burst),
            (args.long_tokens, args.window, steady),
        ):
            peer, peer_url = start_plain_chat(
                backend_url, MODEL, cpu=args.ui_cpu, num_predict=tokens
            )
            try:
                rounds += [
                    asyncio.run(run_round(
                        peer_url, backend_url, peer.popen.pid, n, tokens, window, PLAIN_CHAT
                    ))
                    for n in counts
                ]  # fmt: skip
            finally:
                peer.stop()
    finally:
        ui.stop()
        backend.stop()

    print(
        f"\n### Concurrency: one UI process on core {args.ui_cpu}, synthetic backend at "
        f"{args.rate:g} tokens/s per stream\n"
    )
    print(
        f"({load_note()}; clients and backend on core(s) {sorted(other)}; the UI idle, "
        f"before the rounds: {idle_share * 100:.1f} % of its core)\n"
    )
    print(f"**Burst**: N messages sent at the same instant, {args.tokens}-token replies\n")
    print(table(ROUND_HEADERS, [r.row() for r in burst]))
    print(
        f"\n**Staggered**: N messages spread over {args.window:g} s, {args.long_tokens}-token "
        f"replies (all N streaming together for most of the run)\n"
    )
    print(table(ROUND_HEADERS, [r.row() for r in steady]))
    print(
        f"\n**Reply growth**: {args.growth_streams} streams of {args.growth_tokens} tokens "
        "started together; UI CPU per token as the replies grow\n"
    )
    print(table(
        ["reply tokens", "UI CPU (1 core)", "UI CPU ms/token"],
        [[f"{w.reply_tokens[0]}–{w.reply_tokens[1]}", f"{w.cpu_share * 100:.0f} %",
          f"{w.cpu_ms_per_token:.3f}"] for w in growth],
    ))  # fmt: skip
    print(
        f"\n**Long chats**: one {args.long_tokens // 2}-token reply after a chat of N messages "
        "(400 characters each); the UI's CPU for that reply\n"
    )
    print(table(
        ["messages before", "page updates", "UI CPU ms per reply", "wall s"],
        [[h.messages, h.updates, f"{h.cpu_ms:.0f}", f"{h.wall_s:.2f}"] for h in history],
    ))  # fmt: skip
    big = max(counts)
    for label, rounds in (("burst", burst), ("staggered", steady)):
        r = next(x for x in rounds if x.n == big and x.app == THIS_APP.label)
        print(
            f"\nGoal {big} streams on one core, p95 added TTFT <= 300 ms, none starved "
            f"(no update gap > {STARVED_GAP_S:g} s), {label}: "
            f"{'met' if r.goal_met else 'NOT met'} (p95 {r.added_ttft_ms[1]:.0f} ms, "
            f"{r.starved} starved)"
        )
    sys.exit(0)


if __name__ == "__main__":
    main()
