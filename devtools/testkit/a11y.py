"""axe-core (bundled by `axe-playwright-python`) run in a Playwright page, limited to the
WCAG 2.0/2.1 level A and AA rules, with results a failing test can print.

    found = axe_violations(page)            # [] when the page passes
    assert not found, describe(found)

Gradio's dark theme is the class `dark` on <body> (what `?__theme=dark` sets at load), so
`theme(page, "dark")` shows the same state in the other theme without redoing the steps
that led to it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from axe_playwright_python.sync_playwright import Axe
from playwright.sync_api import Page

WCAG_A_AA = ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa"]
AXE_OPTIONS = {"runOnly": {"type": "tag", "values": WCAG_A_AA}, "resultTypes": ["violations"]}

_AXE_SOURCE = Axe().axe_script


@dataclass(frozen=True)
class Violation:
    rule: str  # axe rule id, e.g. "color-contrast"
    impact: str  # minor, moderate, serious, critical
    targets: tuple[str, ...]  # a CSS selector per failing node
    summaries: tuple[str, ...]  # axe's "fix any of ..." text per node

    @property
    def nodes(self) -> int:
        return len(self.targets)


def axe_violations(page: Page) -> list[Violation]:
    """The WCAG 2 A/AA violations axe-core finds in the page as it is now."""
    if not page.evaluate("typeof window.axe !== 'undefined'"):
        page.evaluate(_AXE_SOURCE)
    results: dict[str, Any] = page.evaluate("(options) => axe.run(document, options)", AXE_OPTIONS)
    return [
        Violation(
            rule=v["id"],
            impact=str(v.get("impact")),
            targets=tuple(" ".join(map(str, n["target"])) for n in v["nodes"]),
            summaries=tuple(str(n.get("failureSummary", "")) for n in v["nodes"]),
        )
        for v in results["violations"]
    ]


def theme(page: Page, name: Literal["light", "dark"]) -> None:
    """Switch Gradio's theme the way `?__theme=` does at load (the `dark` class on body),
    and wait for the colour transitions it starts (axe would read colours half-way)."""
    page.evaluate(
        """async (dark) => {
            document.body.classList.toggle('dark', dark);
            await new Promise(requestAnimationFrame);
            await Promise.all(document.getAnimations()
                .filter((a) => a instanceof CSSTransition)
                .map((a) => a.finished.catch(() => {})));
        }""",
        name == "dark",
    )


def summary(found: list[Violation]) -> str:
    """One line: rule ids with node counts, "none" when clean."""
    return ", ".join(f"{v.rule} ({v.nodes})" for v in found) or "none"


def describe(found: list[Violation], detail: bool = True) -> str:
    """Every violation with its rule id, impact and the selectors of its nodes."""
    lines = []
    for v in found:
        lines.append(f"{v.rule} [{v.impact}] x{v.nodes}:")
        for target, why in zip(v.targets, v.summaries, strict=True):
            first = why.splitlines()[1].strip() if detail and "\n" in why else ""
            lines.append(f"    {target}" + (f"  -- {first}" if first else ""))
    return "\n".join(lines)
