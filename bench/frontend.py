"""Benchmark: the page as a browser loads it, this app against the plain `gr.ChatInterface`
(bench/plain_chat.py), both in front of the same synthetic backend (issue 23).

Lighthouse (pinned with pa11y in bench/frontend/package-lock.json; `npm ci` installs them
there on first use, no browser download) audits each app's page in headless Chromium, the
two apps alternately (ours, peer, ours, peer, ...) so drift affects both, for each preset:
"mobile" (Lighthouse's default: phone emulation, simulated slow 4G and CPU throttling) and
"desktop" (`--preset=desktop`). Medians per metric of `--runs` runs. pa11y (HTML_CodeSniffer,
WCAG 2 AA) checks each page once in the light and the dark theme (`?__theme=dark`), at a
phone and a desktop viewport. Raw reports go to test-artifacts/lighthouse/ and
test-artifacts/pa11y/.

Goals (issue 23): mobile performance >= 90 and >= the peer's; mobile LCP <= 2.5 s; bytes on
load <= the peer's; no console errors; no colour-contrast findings (Lighthouse) and no pa11y
errors.

Needs Node.js with npm, and Chromium at /usr/bin/chromium (Debian's `chromium`; another
path with CHROME_PATH).

    .venv/bin/python -m bench.frontend [--runs 3] [--presets mobile,desktop] [--no-pa11y]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.common import (
    git_revision,
    load_note,
    median,
    start_plain_chat,
    start_synthetic,
    start_ui,
    table,
)
from bench.synthetic_ollama import MODEL
from devtools.testkit.procs import ARTIFACTS, ROOT, Proc

NPM_DIR = ROOT / "bench" / "frontend"
BIN = NPM_DIR / "node_modules" / ".bin"
LH_DIR = ARTIFACTS / "lighthouse"
PA11Y_DIR = ARTIFACTS / "pa11y"
CHROME = os.environ.get("CHROME_PATH", "/usr/bin/chromium")
CHROME_FLAGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
CATEGORIES = "performance,accessibility,best-practices"
PRESETS = ("mobile", "desktop")
APPS = ("ours", "peer")
APP_LABELS = {"ours": "this app", "peer": "plain ChatInterface"}
THEMES = ("light", "dark")
VIEWPORTS = {
    "phone 412x915": {"width": 412, "height": 915, "isMobile": True, "hasTouch": True},
    "desktop 1280x800": {"width": 1280, "height": 800},
}
# Gradio's heartbeat (/gradio_api/heartbeat/...) is a fetch that stays open as long as the page:
# Lighthouse never sees the network idle, so it always waits for its whole load limit (45 s
# by default) and then warns that the page "loaded too slowly". Both pages have loaded long
# before (locally, in well under a second); the limit only bounds the recorded window.
MAX_WAIT_S = 15.0
SLOW_LOAD = "loaded too slowly"  # in that warning
LH_TIMEOUT_S = 240  # one Lighthouse run; ~25 s with MAX_WAIT_S
PA11Y_TIMEOUT_S = 120
PERF_GOAL = "mobile performance >= 90 and >= the peer's"
LCP_GOAL = "mobile LCP <= 2.5 s"


@dataclass
class Metric:
    label: str
    fmt: str  # format spec of one value
    get: Callable[[dict[str, Any]], float]


def _score(report: dict[str, Any], category: str) -> float:
    score = report["categories"].get(category, {}).get("score")
    return math.nan if score is None else score * 100


def _numeric(report: dict[str, Any], audit: str, scale: float = 1.0) -> float:
    value = report["audits"].get(audit, {}).get("numericValue")
    return math.nan if value is None else value * scale


def _items(report: dict[str, Any], audit: str) -> list[dict[str, Any]]:
    return ((report["audits"].get(audit) or {}).get("details") or {}).get("items") or []


def _transfer_kib(report: dict[str, Any]) -> float:
    requests = _items(report, "network-requests")
    if requests:
        return sum(r.get("transferSize") or 0 for r in requests) / 1024
    return _numeric(report, "total-byte-weight", 1 / 1024)


def _request_count(report: dict[str, Any]) -> float:
    return float(len(_items(report, "network-requests"))) or math.nan


METRICS = [
    Metric("performance score", ".0f", lambda r: _score(r, "performance")),
    Metric("FCP s", ".2f", lambda r: _numeric(r, "first-contentful-paint", 1e-3)),
    Metric("LCP s", ".2f", lambda r: _numeric(r, "largest-contentful-paint", 1e-3)),
    Metric("TBT ms", ".0f", lambda r: _numeric(r, "total-blocking-time")),
    Metric("Speed Index s", ".2f", lambda r: _numeric(r, "speed-index", 1e-3)),
    Metric("transfer on load KiB", ".0f", _transfer_kib),
    Metric("requests on load", ".0f", _request_count),
    Metric("console errors", ".0f", lambda r: float(len(_items(r, "errors-in-console")))),
    Metric("best-practices score", ".0f", lambda r: _score(r, "best-practices")),
    Metric("accessibility score", ".0f", lambda r: _score(r, "accessibility")),
    Metric("colour-contrast findings", ".0f", lambda r: float(len(_items(r, "color-contrast")))),
]


@dataclass
class Results:
    # (preset, app) -> one report per run
    reports: dict[tuple[str, str], list[dict[str, Any]]] = field(default_factory=dict)
    warnings: set[str] = field(default_factory=set)
    # (app, theme, viewport) -> pa11y issues (None: the run failed)
    pa11y: dict[tuple[str, str, str], list[dict[str, Any]] | None] = field(default_factory=dict)
    pa11y_failures: list[str] = field(default_factory=list)

    def value(self, preset: str, app: str, metric: Metric) -> float:
        return median([metric.get(r) for r in self.reports.get((preset, app), [])])


def ensure_tools() -> None:
    """The pinned npm packages (`npm ci` from the lock when node_modules is missing), and
    Chromium."""
    if not Path(CHROME).is_file():
        sys.exit(f"Chromium not found at {CHROME} (apt-get install chromium, or set CHROME_PATH)")
    if (BIN / "lighthouse").exists() and (BIN / "pa11y").exists():
        return
    npm = shutil.which("npm")
    if npm is None:
        sys.exit("npm not found: the benchmark needs Node.js with npm")
    progress("Installing the pinned page-audit tools (npm ci in bench/frontend) ...")
    done = subprocess.run(
        [npm, "ci", "--no-audit", "--no-fund"],
        cwd=NPM_DIR,
        env={**os.environ, "PUPPETEER_SKIP_DOWNLOAD": "1"},
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        sys.exit(f"npm ci failed ({done.returncode}):\n{done.stdout[-2000:]}{done.stderr[-3000:]}")


def progress(message: str) -> None:
    """What is running now, on stderr: stdout holds only the results."""
    print(message, file=sys.stderr, flush=True)


def fresh_dir(folder: Path) -> None:
    """`folder`, made, without the reports of an earlier run."""
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("*.json"):
        old.unlink()


def tool_version(args: Sequence[str]) -> str:
    try:
        out = subprocess.run(list(args), capture_output=True, text=True, timeout=30)
        return out.stdout.strip().splitlines()[0] if out.stdout.strip() else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def check_running(procs: Sequence[Proc]) -> None:
    """Fail with its log when a server stopped while the pages were audited."""
    for proc in procs:
        if proc.popen.poll() is not None:
            raise RuntimeError(
                f"{proc.name} exited with {proc.popen.returncode}; its log:\n{proc.log()[-3000:]}"
            )


def lighthouse(url: str, preset: str, out: Path, max_wait_s: float) -> dict[str, Any]:
    """One Lighthouse run; the JSON report (also written to `out`)."""
    cmd = [
        str(BIN / "lighthouse"),
        url,
        "--output=json",
        f"--output-path={out}",
        "--quiet",
        f"--chrome-flags={' '.join(CHROME_FLAGS)}",
        f"--only-categories={CATEGORIES}",
        f"--max-wait-for-load={round(max_wait_s * 1000)}",
        "--disable-full-page-screenshot",
    ]
    if preset == "desktop":
        cmd.append("--preset=desktop")
    done = subprocess.run(
        cmd,
        cwd=NPM_DIR,
        env={**os.environ, "CHROME_PATH": CHROME},
        capture_output=True,
        text=True,
        timeout=LH_TIMEOUT_S,
    )
    if not out.is_file():
        raise RuntimeError(f"Lighthouse wrote no report ({done.returncode}): {done.stderr[-3000:]}")
    report = json.loads(out.read_text())
    if report.get("runtimeError"):
        raise RuntimeError(f"Lighthouse failed on {url}: {report['runtimeError']}")
    return report


def run_lighthouse(
    urls: dict[str, str], presets: Sequence[str], runs: int, max_wait_s: float
) -> Results:
    fresh_dir(LH_DIR)
    res = Results()
    for preset in presets:
        for run in range(1, runs + 1):
            for app in APPS:
                out = LH_DIR / f"{preset}-{app}-{run}.json"
                progress(f"Lighthouse {preset} run {run}/{runs}: {APP_LABELS[app]}")
                report = lighthouse(urls[app], preset, out, max_wait_s)
                res.reports.setdefault((preset, app), []).append(report)
                res.warnings.update(
                    f"{APP_LABELS[app]}: {w}"
                    for w in report.get("runWarnings", [])
                    if not (SLOW_LOAD in w and heartbeat_open(report))
                )
    return res


def heartbeat_open(report: dict[str, Any]) -> bool:
    """Whether Gradio's heartbeat was still open when the recording stopped (the reason for
    Lighthouse's "loaded too slowly" warning on these pages: see MAX_WAIT_S)."""
    return any(
        "/heartbeat/" in r.get("url", "") and not r.get("finished")
        for r in _items(report, "network-requests")
    )


def pa11y(url: str, viewport: dict[str, Any], out: Path) -> list[dict[str, Any]] | str:
    """pa11y's issues (errors only, its default) on `url`, or why it failed to run. It exits
    with 2 when it found issues: the JSON report is read either way."""
    config = {
        "chromeLaunchConfig": {"executablePath": CHROME, "args": CHROME_FLAGS},
        "viewport": viewport,
        "timeout": 60_000,
        # Both apps render in the browser: wait for the chat's text box, then a moment more
        # for styles and the components' late layout.
        "actions": ["wait for element textarea to be visible"],
        "wait": 1000,
    }
    config_path = out.with_suffix(".config.json")
    config_path.write_text(json.dumps(config, indent=1))
    cmd = [
        str(BIN / "pa11y"), "--config", str(config_path), "--standard", "WCAG2AA",
        "--runner", "htmlcs", "--reporter", "json", url,
    ]  # fmt: skip
    try:
        done = subprocess.run(
            cmd, cwd=NPM_DIR, capture_output=True, text=True, timeout=PA11Y_TIMEOUT_S
        )
    except subprocess.TimeoutExpired:
        return f"timed out after {PA11Y_TIMEOUT_S} s"
    out.write_text(done.stdout)
    try:
        issues = json.loads(done.stdout)
    except json.JSONDecodeError:
        lines = [line.strip() for line in done.stderr.splitlines() if line.strip()]
        why = next((line for line in lines if "Error" in line), lines[0] if lines else "")
        return f"exit code {done.returncode}: {why[:300]}"
    return [i for i in issues if i.get("type") == "error"]


def run_pa11y(urls: dict[str, str], res: Results) -> None:
    fresh_dir(PA11Y_DIR)
    for app in APPS:
        for theme in THEMES:
            for vp_name, viewport in VIEWPORTS.items():
                progress(f"pa11y {APP_LABELS[app]}: {theme}, {vp_name}")
                out = PA11Y_DIR / f"{app}-{theme}-{vp_name.split()[0]}.json"
                found = pa11y(f"{urls[app]}/?__theme={theme}", viewport, out)
                if isinstance(found, str):
                    res.pa11y_failures.append(f"{APP_LABELS[app]}, {theme}, {vp_name}: {found}")
                res.pa11y[(app, theme, vp_name)] = None if isinstance(found, str) else found


def fmt(value: float, spec: str) -> str:
    return "–" if math.isnan(value) else format(value, spec)


def ratio(ours: float, peer: float) -> str:
    if math.isnan(ours) or math.isnan(peer):
        return "–"
    if peer == 0:
        return "=" if ours == 0 else "–"
    return f"{ours / peer:.2f}"


def shorten(text: str, limit: int = 110) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def print_lighthouse(res: Results, presets: Sequence[str], runs: int, max_wait_s: float) -> None:
    for preset in presets:
        print(
            f"\n### Lighthouse, {preset}: medians of {runs} run(s) per app (requests and bytes: "
            f"those of the first {max_wait_s:g} s, Lighthouse's load window)\n"
        )
        rows = []
        for metric in METRICS:
            ours, peer = (res.value(preset, app, metric) for app in APPS)
            rows.append(
                [metric.label, fmt(ours, metric.fmt), fmt(peer, metric.fmt), ratio(ours, peer)]
            )
        print(table(["metric", APP_LABELS["ours"], APP_LABELS["peer"], "ratio (this/peer)"], rows))
    ours_reports = [r for p in presets for r in res.reports.get((p, "ours"), [])]
    # Messages that differ only past the shortened text (a CSP hash, say) are counted together.
    errors: dict[str, set[str]] = {}
    for r in ours_reports:
        for i in _items(r, "errors-in-console"):
            full = f"{i.get('source', '?')}: {i.get('description', '')}"
            errors.setdefault(shorten(full, 160), set()).add(full)
    distinct = sum(len(v) for v in errors.values())
    print(f"\nConsole errors of this app (distinct, all runs): {distinct or 'none'}")
    for message, variants in sorted(errors.items()):
        print(f"- {len(variants)}× {message}")
    contrast = sorted(
        {
            f"`{i['node'].get('selector', '?')}` "
            f"({shorten(i['node'].get('nodeLabel', ''), 40)}): "
            f"{shorten(i['node'].get('explanation', '').split(chr(10))[-1], 160)}"
            for r in ours_reports
            for i in _items(r, "color-contrast")
            if isinstance(i.get("node"), dict)
        }
    )
    print(f"\nColour-contrast findings of this app (distinct, all runs): {len(contrast) or 'none'}")
    for finding in contrast:
        print(f"- {finding}")
    if res.warnings:
        print("\nLighthouse warnings:")
        for warning in sorted(res.warnings):
            print(f"- {shorten(warning, 300)}")


def print_pa11y(res: Results) -> None:
    print("\n### pa11y (WCAG2AA, HTML_CodeSniffer): errors per page\n")
    rows = []
    for theme in THEMES:
        for vp_name in VIEWPORTS:
            counts = [res.pa11y.get((app, theme, vp_name)) for app in APPS]
            rows.append(
                [f"{theme}, {vp_name}", *("failed" if c is None else str(len(c)) for c in counts)]
            )
    print(table(["page", APP_LABELS["ours"], APP_LABELS["peer"]], rows))
    distinct: dict[tuple[str, str], list[str]] = {}
    for (app, theme, vp_name), issues in res.pa11y.items():
        if app != "ours" or not issues:
            continue
        for issue in issues:
            key = (issue.get("code", "?"), shorten(issue.get("context") or "", 100))
            distinct.setdefault(key, []).append(f"{theme}/{vp_name.split()[0]}")
    print(f"\npa11y errors of this app (distinct): {len(distinct) or 'none'}")
    for (code, context), where in sorted(distinct.items()):
        places = ", ".join(sorted(set(where)))
        print(f"- {code.removeprefix('WCAG2AA.')}: `{context}` ({places})")
    if res.pa11y_failures:
        print("\npa11y runs that failed:")
        for failure in res.pa11y_failures:
            print(f"- {failure}")


def print_goals(res: Results, presets: Sequence[str], with_pa11y: bool) -> None:
    by_label = {m.label: m for m in METRICS}

    def both(preset: str, label: str) -> tuple[float, float]:
        ours, peer = (res.value(preset, app, by_label[label]) for app in APPS)
        return ours, peer

    goals: list[tuple[str, bool | None, str]] = []
    if "mobile" in presets:
        perf, peer_perf = both("mobile", "performance score")
        perf_ok = perf >= 90 and perf >= peer_perf
        goals.append((PERF_GOAL, perf_ok, f"{fmt(perf, '.0f')} vs {fmt(peer_perf, '.0f')}"))
        lcp, _ = both("mobile", "LCP s")
        goals.append((LCP_GOAL, lcp <= 2.5, f"{fmt(lcp, '.2f')} s"))
    else:
        goals += [(PERF_GOAL, None, "mobile not run"), (LCP_GOAL, None, "mobile not run")]
    first = "mobile" if "mobile" in presets else presets[0]
    kib, peer_kib = both(first, "transfer on load KiB")
    detail = f"{fmt(kib, '.1f')} vs {fmt(peer_kib, '.1f')} KiB ({first})"
    goals.append(("bytes on load <= the peer's", kib <= peer_kib, detail))
    ours = [r for p in presets for r in res.reports.get((p, "ours"), [])]
    console = max((len(_items(r, "errors-in-console")) for r in ours), default=0)
    goals.append(("0 console errors", console == 0, f"at most {console} in a run"))
    contrast = max((len(_items(r, "color-contrast")) for r in ours), default=0)
    ok: bool | None = None
    detail = f"at most {contrast} contrast findings in a run; pa11y not run"
    if with_pa11y:
        found = [issues for (app, _, _), issues in res.pa11y.items() if app == "ours"]
        failed = any(f is None for f in found)
        errors = sum(len(f) for f in found if f is not None)
        ok = None if failed else contrast == 0 and errors == 0
        detail = f"at most {contrast} contrast findings in a run, {errors} pa11y errors" + (
            " (a pa11y run failed)" if failed else ""
        )
    goals.append(("0 contrast findings (Lighthouse) and 0 pa11y errors", ok, detail))
    rows = [
        [g, "not measured" if v is None else ("met" if v else "NOT met"), d] for g, v, d in goals
    ]
    print("\n### Goals (issue 23), this app\n")
    print(table(["goal", "verdict", "measured"], rows, "lll"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="Lighthouse runs per app and preset")
    parser.add_argument("--presets", default=",".join(PRESETS), help="mobile, desktop or both")
    parser.add_argument("--no-pa11y", action="store_true", help="skip the pa11y checks")
    parser.add_argument("--rate", type=float, default=50.0, help="synthetic tokens/s")
    parser.add_argument("--first-token-delay", type=float, default=0.02)
    parser.add_argument(
        "--max-wait",
        type=float,
        default=MAX_WAIT_S,
        help="seconds Lighthouse records each page load (Gradio's heartbeat keeps it waiting)",
    )
    args = parser.parse_args()
    presets = [p.strip() for p in args.presets.split(",") if p.strip()]
    unknown = sorted(set(presets) - set(PRESETS))
    if unknown or not presets:
        parser.error(f"unknown preset(s) {unknown}; choose from {list(PRESETS)}")
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    ensure_tools()
    procs: list[Proc] = []
    try:
        backend, backend_url = start_synthetic(
            rate=args.rate, first_token_delay=args.first_token_delay
        )
        procs.append(backend)
        ours, ours_url = start_ui(backend_url)
        procs.append(ours)
        peer, peer_url = start_plain_chat(backend_url, MODEL)
        procs.append(peer)
        urls = {"ours": ours_url, "peer": peer_url}
        try:
            res = run_lighthouse(urls, presets, args.runs, args.max_wait)
        except RuntimeError:
            check_running(procs)  # a server that stopped is the likelier story
            raise
        if not args.no_pa11y:
            check_running(procs)
            run_pa11y(urls, res)
        check_running(procs)
    finally:
        for proc in reversed(procs):
            proc.stop()
    lh_version = tool_version([str(BIN / "lighthouse"), "--version"])
    pa11y_version = tool_version([str(BIN / "pa11y"), "--version"])
    chromium = tool_version([CHROME, "--version"])
    print(
        f"\n## Front end: this app vs the plain ChatInterface\n\n({load_note()}; revision "
        f"{git_revision()}; Lighthouse {lh_version}, pa11y {pa11y_version}, {chromium}; raw "
        f"reports in {LH_DIR.relative_to(ROOT)}/)"
    )
    print_lighthouse(res, presets, args.runs, args.max_wait)
    if not args.no_pa11y:
        print_pa11y(res)
    print_goals(res, presets, not args.no_pa11y)


if __name__ == "__main__":
    main()
