"""Shared pieces of the benchmarks: the UI as a separate process, CPU and memory readings
from /proc, percentiles and markdown tables."""

from __future__ import annotations

import contextlib
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from devtools.testkit.procs import Proc, free_port, wait_http

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def start_ui(
    backend_url: str,
    *,
    cpu: int | None = None,
    name: str = "bench-ui",
    **env: str,
) -> tuple[Proc, str]:
    """`python -m ui` in its own process (optionally pinned to one core with taskset),
    pointed at `backend_url`, with no auth and limits high enough for load tests unless
    `env` (LLM_* variables) says otherwise. Returns the process and the UI's base URL."""
    port = free_port()
    full_env = {
        "LLM_BACKEND_URL": backend_url,
        "LLM_AUTH": "none",
        "LLM_UI_HOST": "127.0.0.1",
        "PORT": str(port),
        "LLM_CONCURRENCY": "200",
        "LLM_MAX_QUEUE": "400",
        "LLM_RATE_LIMIT": "100000",
        # Load tests measure the UI, not the fair wait for a model's slots (ui/turn/fair_slots.py).
        "LLM_MODEL_SLOTS": "100000",
        # Every simulated user connects from 127.0.0.1, which the UI counts as one client
        # with at most 3 replies at once (ui/web/rate_limit.py); load tests are many users.
        "LLM_STREAMS_PER_CLIENT": "100000",
        "GRADIO_ANALYTICS_ENABLED": "False",
        **env,
    }
    pin = ["taskset", "-c", str(cpu)] if cpu is not None else []
    proc = Proc(name, [*pin, sys.executable, "-m", "ui"], env=full_env)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(url + "/config", timeout=90, proc=proc.popen)
    except Exception:
        proc.stop()
        raise RuntimeError(f"the UI did not start; its log:\n{proc.log()[-3000:]}") from None
    return proc, url


def start_plain_chat(
    backend_url: str, model: str, *, cpu: int | None = None, num_predict: int | None = None
) -> tuple[Proc, str]:
    """The peer, a plain gr.ChatInterface (bench/plain_chat.py), in its own process
    (optionally pinned to one core). Returns the process and its base URL."""
    port = free_port()
    pin = ["taskset", "-c", str(cpu)] if cpu is not None else []
    length = ["--num-predict", str(num_predict)] if num_predict else []
    proc = Proc(
        "bench-plain-chat",
        [*pin, sys.executable, "-m", "bench.plain_chat", "--backend", backend_url,
         "--port", str(port), "--model", model, *length],
        env={"GRADIO_ANALYTICS_ENABLED": "False"},
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(url + "/config", timeout=90, proc=proc.popen)
    except Exception:
        proc.stop()
        raise RuntimeError(
            f"the plain chat did not start; its log:\n{proc.log()[-3000:]}"
        ) from None
    return proc, url


def pin_self(cpus: set[int]) -> None:
    """Pin this process (all its threads created from now on) to `cpus`, if possible."""
    with contextlib.suppress(OSError, AttributeError):
        os.sched_setaffinity(0, cpus)


@dataclass
class CpuSample:
    cpu_s: float  # user + system CPU seconds of all threads
    wall_s: float  # perf_counter


def process_cpu(pid: int) -> CpuSample:
    """CPU seconds used so far by a process (all threads), from /proc/PID/stat."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    # After the ")" closing the command name: state is field 0, utime 11, stime 12.
    return CpuSample((int(fields[11]) + int(fields[12])) / CLOCK_TICKS, time.perf_counter())


def cpu_share(before: CpuSample, after: CpuSample) -> float:
    """CPU used between two samples as a share of one core (1.0 = one core busy)."""
    wall = after.wall_s - before.wall_s
    return (after.cpu_s - before.cpu_s) / wall if wall > 0 else 0.0


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def pct(values: Sequence[float], q: float) -> float:
    """The q-quantile (0..1) by nearest rank; nan for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def table(headers: Sequence[str], rows: Sequence[Sequence[object]], align: str = "") -> str:
    """A markdown table; `align` per column: "l" or "r" (default: first left, others right)."""
    aligns = align or "l" + "r" * (len(headers) - 1)
    lines = [
        "| " + " | ".join(headers) + " |",
        "|" + "|".join("---" if a == "l" else "---:" for a in aligns) + "|",
    ]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def load_note() -> str:
    """The machine's load average, to print next to results (they are noisy under load)."""
    one, five, _ = os.getloadavg()
    return f"load average {one:.2f} (1 min), {five:.2f} (5 min) on {os.cpu_count()} cores"


def start_synthetic(
    *, rate: float, first_token_delay: float, cpu: int | None = None
) -> tuple[Proc, str]:
    """The synthetic Ollama backend (bench/synthetic_ollama.py) in its own process."""
    port = free_port()
    pin = ["taskset", "-c", str(cpu)] if cpu is not None else []
    proc = Proc(
        "bench-synthetic",
        [*pin, sys.executable, "-m", "bench.synthetic_ollama", "--port", str(port),
         "--rate", str(rate), "--first-token-delay", str(first_token_delay)],
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    wait_http(url + "/", timeout=30, proc=proc.popen)
    return proc, url


def git_revision() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5
        )
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


BUSY_LOOP = [sys.executable, "-c", "while True: pass"]


@contextlib.contextmanager
def busy_core() -> Iterator[None]:
    """Another process keeping one core busy (a plain busy loop) for the block's duration."""
    hog = subprocess.Popen(BUSY_LOOP)
    try:
        yield
    finally:
        hog.kill()
        hog.wait()
