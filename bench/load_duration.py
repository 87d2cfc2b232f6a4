"""What `load_duration` the real engine reports for a cold load and for a loaded model, on a
quiet machine and with another process keeping one core busy: the evidence behind
`ui/backend_access/client.py` MODEL_LOAD_MIN_S (the rule "this reply waited for a model load").

    .venv/bin/python -m bench.load_duration [--rounds 8]

Prints a markdown table (min / median / max in milliseconds per model, state and load).
"""

from __future__ import annotations

import argparse
import contextlib
import statistics

import httpx

from bench.common import busy_core
from devtools.testkit.procs import start_engine

MODELS = ("smollm2:135m", "gemma3:270m")
HELLO = [{"role": "user", "content": "Hi"}]


def load_ms(client: httpx.Client, model: str, keep_alive: float | None = None) -> float:
    body: dict[str, object] = {
        "model": model,
        "messages": HELLO,
        "stream": False,
        "options": {"num_predict": 1, "temperature": 0},
    }
    if keep_alive is not None:
        body["keep_alive"] = keep_alive
    answer = client.post("/api/chat", json=body).json()
    return float(answer["load_duration"]) / 1e6


def measure(url: str, rounds: int) -> dict[tuple[str, str], list[float]]:
    seen: dict[tuple[str, str], list[float]] = {}
    with httpx.Client(base_url=url, timeout=300) as client:
        for model in MODELS:
            for _ in range(rounds):
                seen.setdefault((model, "cold"), []).append(load_ms(client, model))
                seen.setdefault((model, "warm"), []).append(load_ms(client, model, keep_alive=0))
    return seen


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=8)
    args = parser.parse_args()
    proc, url = start_engine(name="bench-load-engine")
    rows = []
    try:
        for busy in (False, True):
            with busy_core() if busy else contextlib.nullcontext():
                for (model, state), values in measure(url, args.rounds).items():
                    rows.append((model, state, "one core busy" if busy else "quiet", values))
    finally:
        proc.stop()
    print("| model | state | machine | min ms | median ms | max ms |")
    print("|---|---|---|---|---|---|")
    for model, state, machine, values in rows:
        print(
            f"| {model} | {state} | {machine} | {min(values):.3f} | "
            f"{statistics.median(values):.3f} | {max(values):.3f} |"
        )


if __name__ == "__main__":
    main()
