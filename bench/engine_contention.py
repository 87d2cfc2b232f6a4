"""Benchmark: decode speed when another process keeps a core busy.

The engine picks a stream's thread count by measurement (`backend.threads`). This runs,
side by side and interleaved: the engine over HTTP, and llama-cpp-python in process with a
fixed 1 thread and a fixed N (all usable cores) threads; first on the idle machine, then
with one busy-loop process beside them (a stand-in for the UI under load, a browser, a
noisy neighbour). Prints tokens/s medians and each path's ratio busy / idle.

    .venv/bin/python -m bench.engine_contention [--runs 3] [--tokens 96] [--model gemma3:270m]
"""

from __future__ import annotations

import argparse

from llama_cpp import Llama

from backend import model_files
from backend.engine import usable_cores
from bench.common import busy_core, load_note, median, table
from bench.engine_vs_inprocess import run_http, run_inprocess
from catalog import find
from devtools.testkit.procs import start_engine


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--tokens", type=int, default=96)
    parser.add_argument("--model", default="gemma3:270m")
    args = parser.parse_args()
    spec = find(args.model)
    assert spec and spec.prompt_format, f"{args.model} is not a bundled model"
    many = usable_cores()
    proc, url = start_engine(None, "--num-parallel", "1", name="bench-engine")
    contexts = {
        n: Llama(model_path=str(model_files.gguf_path(spec.tag)), n_ctx=2048, n_batch=512,
                 n_threads=n, n_threads_batch=n, verbose=False)
        for n in sorted({1, many})
    }  # fmt: skip
    paths = ["engine (threads chosen by measurement)"] + [
        f"in process, fixed {n} thread{'s' if n > 1 else ''}" for n in contexts
    ]
    speeds: dict[tuple[str, str], list[float]] = {}

    def one_round(condition: str, seed: int) -> None:
        speeds.setdefault((paths[0], condition), []).append(
            run_http(url, spec.tag, args.tokens, seed)[1]
        )
        for path, llama in zip(paths[1:], contexts.values(), strict=True):
            speeds.setdefault((path, condition), []).append(
                run_inprocess(llama, spec.prompt_format, args.tokens, seed)[1]  # type: ignore[arg-type]
            )

    try:
        run_http(url, spec.tag, 8, 0)  # load the model in the engine
        for llama in contexts.values():
            run_inprocess(llama, spec.prompt_format, 8, 0)  # type: ignore[arg-type]
        note = load_note()
        for i in range(args.runs):
            one_round("idle", i)
        with busy_core():
            for i in range(args.runs):
                one_round("busy", i)
    finally:
        proc.stop()
        for llama in contexts.values():
            llama.close()
    rows = []
    for path in paths:
        idle, busy = median(speeds[(path, "idle")]), median(speeds[(path, "busy")])
        rows.append([path, f"{idle:.1f}", f"{busy:.1f}", f"{busy / idle:.2f}"])
    print(
        f"\nModel {spec.tag}, {args.tokens} tokens, {args.runs} interleaved runs per condition, "
        f"tokens/s medians, {many} usable cores; before the runs: {note}\n"
    )
    print(table(["path", "idle machine", "one core busy", "busy / idle"], rows))


if __name__ == "__main__":
    main()
