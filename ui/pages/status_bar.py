"""The backend status line above every page, and the refresh that fills provisional pickers.

    status = layout_status_bar(ctx)                     # in ui/app.py, above the tabs
    wire_status_bar(demo, ctx, status, [chat.picker(), compare.picker()], loads)

The line shows `BackendWatch.view()` (ui/backend_access/status.py), drawn by ui/view/render.py:
asleep / starting a GPU instance / loading <model> / ready / unreachable, with elapsed and
typical seconds and the estimated GPU cost. Screen readers hear its changes of phase
through the page's live regions (ui/view/a11y.py; assertively when the backend cannot be used).

The page's one load request (ui/pages/page_load.py) draws the line as it is then, and says
whether the pickers it filled hold the backend's real list.

Refresh: a small browser script clicks a hidden button, every STATUS_POLL_FAST_MS while
something is under way (every STATUS_POLL_FIRST_MS for the first few seconds and until
anything is known) and every STATUS_POLL_SLOW_MS once settled, and not at all while
the tab is hidden (document.visibilityState). The handler reads the watch only (no backend
request), so an open but idle page does not keep a GPU instance awake, and it updates the
line alone: every output of an event costs the page's main thread on each answer, and a
phone felt the polls (issue 23). While a page's pickers hold a provisional list (the
backend had not answered at page load) and the process has the real list, the line says
so (`data-pickers-refill`) and the script clicks a second hidden button, whose handler
replaces the pickers (and what follows from them) with the real list, without a reload.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import gradio as gr

from ui.backend_access.models import ModelChoices
from ui.context import AppContext
from ui.pages.page_load import PageLoads
from ui.turn.checks import MODEL_LIST_DEADLINE_S
from ui.view.render import backend_status_html

STATUS_POLL_FIRST_MS = 1000  # the first seconds after page load, and until a state is known
STATUS_POLL_FIRST_TICKS = 4
STATUS_POLL_FAST_MS = 2000
STATUS_POLL_SLOW_MS = 10000

# Runs once in the browser at page load. A hidden tab clicks nothing (no requests); a tab
# that becomes visible again refreshes at once.
STATUS_POLL_JS = f"""
() => {{
  if (window.__backendStatusPoll) return;
  window.__backendStatusPoll = true;
  let ticks = 0;
  const refresh = () => {{
    const button = document.getElementById('backend-status-refresh');
    if (button && document.visibilityState === 'visible') button.click();
  }};
  const loop = () => {{
    refresh();
    const line = document.querySelector('#backend-status .backend-status');
    if (line && line.dataset.pickersRefill === 'true') {{
      document.getElementById('backend-pickers-refill')?.click();
    }}
    const settled = line && line.dataset.settled === 'true'
      && line.dataset.provisionalPickers !== 'true';
    // The first seconds after page load are when the page's own pre-warm moves things.
    const early = (ticks += 1) <= {STATUS_POLL_FIRST_TICKS} || !line
      || line.dataset.state === 'unknown';
    const wait = early ? {STATUS_POLL_FIRST_MS}
      : settled ? {STATUS_POLL_SLOW_MS} : {STATUS_POLL_FAST_MS};
    setTimeout(loop, wait);
  }};
  setTimeout(loop, 500);
  document.addEventListener('visibilitychange', refresh);
}}
"""


@dataclass(frozen=True)
class Picker:
    """A page's model picker, how it takes the backend's real list, and what follows from
    its value. `refill(real list, current value)` returns the picker's update and its new
    value; `follow(value)` returns the updates of `followers` (the model's description, the
    image control, column headers), which every change of the value brings along: the
    page's load, the user's pick, a refill, a copy continued or a chat imported."""

    component: gr.Dropdown
    refill: Callable[[ModelChoices, Any], Awaitable[tuple[Any, Any]]]
    follow: Callable[[Any], Awaitable[Sequence[Any]]]
    followers: Sequence[Any]

    def then_follow(self) -> dict[str, Any]:
        """Keyword arguments of an event (`.then(**...)`, `.input(**...)`) that updates
        the followers from the picker's value."""
        return {
            "fn": self.follow,
            "inputs": [self.component],
            "outputs": list(self.followers),
            "queue": False,
            "preprocess": False,
            "api_visibility": "undocumented",
            "show_progress": "hidden",
        }


@dataclass(frozen=True)
class StatusBar:
    line: gr.HTML
    refresh: gr.Button
    refill: gr.Button
    pickers_real: gr.State  # this page's pickers hold the backend's real list


def layout_status_bar(ctx: AppContext) -> StatusBar:
    line = gr.HTML(backend_status_html(ctx.watch.view()), elem_id="backend-status", padding=False)
    refresh = gr.Button("Refresh status", elem_id="backend-status-refresh")
    refill = gr.Button("Refill model pickers", elem_id="backend-pickers-refill")
    return StatusBar(line, refresh, refill, gr.State(False))


def wire_status_bar(
    demo: gr.Blocks,
    ctx: AppContext,
    bar: StatusBar,
    pickers: Sequence[Picker],
    loads: PageLoads,
) -> None:
    async def on_load(request: gr.Request) -> tuple[Any, Any]:
        # The same list the pages' parts of this load fill their pickers from.
        choices = await ctx.models.choices(deadline=MODEL_LIST_DEADLINE_S)
        real = not choices.provisional
        return status_line(ctx, pickers_real=real), real

    async def refresh(pickers_real: bool) -> str:
        return status_line(ctx, pickers_real=pickers_real)

    followers = [f for p in pickers for f in p.followers]

    async def refill(pickers_real: bool, *values: Any) -> tuple[Any, ...]:
        real = ctx.models.fresh() if not pickers_real else None
        # A picker still empty has not been filled by the page's load handler yet, which
        # reads the same list and applies a deep link (?model=, ?compare=). Refilling now
        # would land after that handler and replace the linked pick with the default.
        if real is None or not real.labels or any(not_filled(v) for v in values):
            return (pickers_real, *[gr.skip()] * (len(values) + len(followers)))
        updates: list[Any] = []
        followed: list[Any] = []
        for picker, value in zip(pickers, values, strict=True):
            update, new_value = await picker.refill(real, value)
            updates.append(update)
            followed += await picker.follow(new_value)
        return (True, *updates, *followed)

    quiet: dict[str, Any] = {
        "queue": False, "show_progress": "hidden", "api_visibility": "private",
    }  # fmt: skip
    loads.add(on_load, [bar.line, bar.pickers_real])
    bar.refresh.click(refresh, inputs=[bar.pickers_real], outputs=[bar.line], **quiet)
    components = [p.component for p in pickers]
    bar.refill.click(
        refill,
        inputs=[bar.pickers_real, *components],
        outputs=[bar.pickers_real, *components, *followers],
        **quiet,
    )
    demo.load(fn=None, js=STATUS_POLL_JS)


def not_filled(value: object) -> bool:
    """A picker's value before its page's load handler ran (the layout's None or [])."""
    return value is None or value == [] or value == ""


def status_line(ctx: AppContext, *, pickers_real: bool) -> str:
    """The watch's line, with what the page's script needs: whether the pickers are still
    provisional (it polls fast) and whether the real list can be had now (it refills)."""
    known = ctx.models.fresh()
    refill = not pickers_real and known is not None and bool(known.labels)
    return backend_status_html(
        ctx.watch.view(), provisional_pickers=not pickers_real, refill=refill
    )
