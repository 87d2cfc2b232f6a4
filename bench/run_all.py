"""Run every benchmark, one after the other, and print all their tables (`make bench`).

Each benchmark runs in its own process with its default (modest) settings; the combined
output also goes to test-artifacts/bench-results.md. Results are noisy when other work
shares the machine: the load average is printed with each table.

    .venv/bin/python -m bench.run_all [--only relay_overhead,concurrency,...]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time

from devtools.testkit.procs import ARTIFACTS, ROOT

BENCHMARKS = [
    "engine_vs_inprocess",
    "engine_contention",
    "relay_overhead",
    "concurrency",
    "cold_start",
    "leaderboard",
    "image_resize",
    "frontend",  # needs Node.js with npm and Chromium (bench/frontend.py)
]
TIMEOUT_S = 900  # per benchmark; each takes a few minutes at most by default


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", default="", help=f"comma-separated subset of {BENCHMARKS}")
    args = parser.parse_args()
    chosen = [b.strip() for b in args.only.split(",") if b.strip()] or BENCHMARKS
    unknown = sorted(set(chosen) - set(BENCHMARKS))
    if unknown:
        parser.error(f"unknown benchmark(s) {unknown}; choose from {BENCHMARKS}")
    sections: list[str] = []
    failed: list[str] = []
    for name in chosen:
        print(f"\n## bench.{name}\n", flush=True)
        started = time.monotonic()
        try:
            done = subprocess.run(
                [sys.executable, "-m", f"bench.{name}"],
                cwd=ROOT,
                capture_output=True,
                text=True,
                timeout=TIMEOUT_S,
            )
            output, code = done.stdout, done.returncode
            if code != 0:
                output += f"\n(exit code {code})\n{done.stderr[-3000:]}"
        except subprocess.TimeoutExpired:
            output, code = f"(timed out after {TIMEOUT_S} s)", -1
        took = time.monotonic() - started
        print(output.strip() + f"\n\n({took:.0f} s)", flush=True)
        sections.append(f"## bench.{name}\n\n{output.strip()}\n\n({took:.0f} s)\n")
        if code != 0:
            failed.append(name)
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "bench-results.md").write_text("\n".join(sections))
    if failed:
        print(f"\nFailed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
