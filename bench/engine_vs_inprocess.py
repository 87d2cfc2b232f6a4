"""Benchmark: the local engine over HTTP vs llama-cpp-python in process.

Same model, prompt, seed, sampling and token count; runs interleaved (HTTP, in-process,
HTTP, ...) so machine noise hits both sides alike. Prints a markdown table of medians and
the ratio. Goal: HTTP engine >= 0.95 x in-process tokens/s.

    .venv/bin/python -m bench.engine_vs_inprocess [--runs 7] [--tokens 128] [--model smollm2:135m]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import httpx
from llama_cpp import Llama

from backend import model_files, prompts
from backend.engine import usable_cores
from catalog import find
from devtools.testkit.procs import start_engine

PROMPT = "Write a short story about a lighthouse keeper who finds a message in a bottle."


def run_http(url: str, model: str, tokens: int, seed: int) -> tuple[float, float, int]:
    """Returns (time to first token s, tokens/s measured by the client, tokens)."""
    body = {
        "model": model,
        "messages": [{"role": "user", "content": PROMPT}],
        "options": {"num_predict": tokens, "seed": seed, "temperature": 0, "repeat_penalty": 1.0},
    }
    t0 = time.perf_counter()
    first: float | None = None
    count = 0
    with httpx.stream("POST", url + "/api/chat", json=body, timeout=300) as resp:
        for line in resp.iter_lines():
            chunk = json.loads(line)
            if chunk.get("done"):
                count = chunk["eval_count"]
                break
            if first is None and chunk["message"]["content"]:
                first = time.perf_counter()
    end = time.perf_counter()
    assert first is not None
    return first - t0, (count - 1) / (end - first), count


def run_inprocess(llama: Llama, fmt: str, tokens: int, seed: int) -> tuple[float, float, int]:
    segments = prompts.render(fmt, [prompts.Message("user", PROMPT)])  # type: ignore[arg-type]
    ids: list[int] = []
    for i, seg in enumerate(segments):
        ids += llama.tokenize(seg.text.encode(), add_bos=(i == 0), special=seg.special)
    llama.set_seed(seed)
    t0 = time.perf_counter()
    first: float | None = None
    count = 0
    for _tok in llama.generate(ids, top_k=1, top_p=0.9, min_p=0.0, temp=0, repeat_penalty=1.0):
        count += 1
        if first is None:
            first = time.perf_counter()
        if count >= tokens:
            break
    end = time.perf_counter()
    assert first is not None
    return first - t0, (count - 1) / (end - first), count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[1])
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--model", default="smollm2:135m")
    args = parser.parse_args()
    spec = find(args.model)
    assert spec and spec.prompt_format, f"{args.model} is not a bundled model"
    threads = usable_cores()  # what the engine uses too

    # One parallel slot, like the in-process side: one context, all cores.
    proc, url = start_engine(None, "--num-parallel", "1", name="bench-engine")
    llama = Llama(
        model_path=str(model_files.gguf_path(spec.tag)),
        n_ctx=2048,
        n_batch=512,
        n_threads=threads,
        n_threads_batch=threads,
        verbose=False,
    )
    try:
        run_http(url, spec.tag, 8, 0)  # load the model in the engine
        run_inprocess(llama, spec.prompt_format, 8, 0)  # warm up
        http, local = [], []
        for i in range(args.runs):
            http.append(run_http(url, spec.tag, args.tokens, i))
            local.append(run_inprocess(llama, spec.prompt_format, args.tokens, i))
    finally:
        proc.stop()
        llama.close()

    def med(rows: list[tuple[float, float, int]], k: int) -> float:
        return statistics.median(r[k] for r in rows)

    tps_http, tps_local = med(http, 1), med(local, 1)
    ttft_http, ttft_local = med(http, 0) * 1000, med(local, 0) * 1000
    print(
        f"\nModel {spec.tag}, {args.tokens} tokens, {args.runs} interleaved runs, "
        f"{threads} threads, medians\n"
    )
    print("| path | TTFT ms | tokens/s |")
    print("|---|---:|---:|")
    print(f"| llama-cpp-python in process | {ttft_local:.1f} | {tps_local:.1f} |")
    print(f"| engine over HTTP (ollama API) | {ttft_http:.1f} | {tps_http:.1f} |")
    print(
        f"| ratio HTTP / in-process | {ttft_http / ttft_local:.2f} | "
        f"**{tps_http / tps_local:.3f}** |"
    )
    ok = tps_http / tps_local >= 0.95
    print(f"\nGoal HTTP >= 0.95 x in-process tokens/s: {'met' if ok else 'NOT met'}")
    sys.exit(0)


if __name__ == "__main__":
    main()
