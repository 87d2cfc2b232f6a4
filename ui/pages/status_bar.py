"""The backend status line above every page, and the refresh that fills provisional pickers.

    status = layout_status_bar(ctx)                     # in ui/app.py, above the tabs
    wire_status_bar(demo, ctx, status, [chat.picker(), compare.picker()])

The line shows `BackendWatch.view()` (ui/backend_access/status.py), drawn by ui/view/render.py:
asleep / starting a GPU instance / loading <model> / ready / unreachable, with elapsed and
typical seconds and the estimated GPU cost. Screen readers hear its changes of phase
through the page's live regions (ui/view/a11y.py; assertively when the backend cannot be used).

Refresh: a small browser script clicks a hidden button, every STATUS_POLL_FAST_MS while
something is under way (every STATUS_POLL_FIRST_MS for the first few seconds and until
anything is known) and every STATUS_POLL_SLOW_MS once settled, and not at all while
the tab is hidden (document.visibilityState). The handler reads the watch only (no backend
request), so an open but idle page does not keep a GPU instance awake; and while a page's
pickers hold a provisional list (the backend had not answered at page load), it replaces
them with the backend's real list as soon as the process has one, without a reload.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import gradio as gr

from ui.backend_access.models import ModelChoices
from ui.context import AppContext
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
    pickers_real: gr.State  # this page's pickers hold the backend's real list


def layout_status_bar(ctx: AppContext) -> StatusBar:
    line = gr.HTML(backend_status_html(ctx.watch.view()), elem_id="backend-status", padding=False)
    refresh = gr.Button(
        "Refresh status",
        elem_id="backend-status-refresh",
    )
    return StatusBar(line, refresh, gr.State(False))


def wire_status_bar(
    demo: gr.Blocks, ctx: AppContext, bar: StatusBar, pickers: Sequence[Picker]
) -> None:
    followers = [f for p in pickers for f in p.followers]

    async def refresh(pickers_real: bool, *values: Any) -> tuple[Any, ...]:
        real = ctx.models.fresh() if not pickers_real else None
        # A picker still empty has not been filled by the page's load handler yet, which
        # reads the same list and applies a deep link (?model=, ?compare=). Refilling now
        # would land after that handler and replace the linked pick with the default.
        if real is None or not real.labels or any(not_filled(v) for v in values):
            line = status_line(ctx, pending=not pickers_real)
            return (line, pickers_real, *[gr.skip()] * (len(values) + len(followers)))
        updates: list[Any] = []
        followed: list[Any] = []
        for picker, value in zip(pickers, values, strict=True):
            update, new_value = await picker.refill(real, value)
            updates.append(update)
            followed += await picker.follow(new_value)
        return (status_line(ctx, pending=False), True, *updates, *followed)

    components = [p.component for p in pickers]
    bar.refresh.click(
        refresh,
        inputs=[bar.pickers_real, *components],
        outputs=[bar.line, bar.pickers_real, *components, *followers],
        queue=False,
        show_progress="hidden",
        api_visibility="private",
    )
    demo.load(fn=None, js=STATUS_POLL_JS)


def not_filled(value: object) -> bool:
    """A picker's value before its page's load handler ran (the layout's None or [])."""
    return value is None or value == [] or value == ""


def status_line(ctx: AppContext, *, pending: bool) -> str:
    """The watch's line; `pending` marks provisional pickers (the page polls fast)."""
    return backend_status_html(ctx.watch.view(), provisional_pickers=pending)
