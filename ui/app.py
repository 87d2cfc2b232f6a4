"""The Gradio app: one Blocks with a tab per page.

    demo = build_app(settings)          # tabs wired, queue configured
    launch(demo, settings)              # serve (blocking unless prevent_thread_lock)

More pages are added as entries of `TABS`: a label and a builder called inside its Tab.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import gradio as gr

from ui.backend_client import BackendClient
from ui.chat_page import build_chat_page
from ui.model_directory import ModelDirectory
from ui.settings import Settings
from ui.warming import ColdStartTracker, Prewarmer

logger = logging.getLogger(__name__)

TITLE = "Serverless LLM Chat"


@dataclass
class AppContext:
    """What every page builder gets."""

    demo: gr.Blocks
    settings: Settings
    client: BackendClient
    models: ModelDirectory
    tracker: ColdStartTracker  # typical cold start, learned by this process (all pages)
    prewarmer: Prewarmer


PageBuilder = Callable[[AppContext], Any]


def _chat_tab(ctx: AppContext) -> Any:
    return build_chat_page(
        ctx.demo, ctx.settings, ctx.client, ctx.models,
        tracker=ctx.tracker, prewarmer=ctx.prewarmer,
    )  # fmt: skip


# (tab label, tab id, builder). Compare and Leaderboard tabs go here.
TABS: list[tuple[str, str, PageBuilder]] = [
    ("Chat", "chat", _chat_tab),
]

CSS = """
/* The banner slot takes no space while it is empty. */
#chat-banner:has(.prose:empty) { display: none; }
.chat-banner { padding: 8px 12px; border-radius: 8px; margin-bottom: 4px; font-size: 0.95em; }
.chat-banner-info { background: var(--color-accent-soft); }
.chat-banner-warning { background: #fff4ce; color: #5c4400; }
.chat-banner-error { background: #fde7e9; color: #7a1020; }
#model-info { font-size: 0.9em; opacity: 0.85; }
#composer { align-items: stretch; }
"""


def build_app(
    settings: Settings,
    *,
    client: BackendClient | None = None,
) -> gr.Blocks:
    """The whole UI with its queue configured. `settings.backend_url` should be resolved
    (see `ui.embedded_engine.resolve_backend`); unset means the local default URL."""
    client = client or BackendClient(settings)
    with gr.Blocks(title=TITLE, fill_width=False) as demo:
        ctx = AppContext(
            demo, settings, client, ModelDirectory(settings, client),
            ColdStartTracker(settings.typical_cold_start), Prewarmer(client),
        )  # fmt: skip
        gr.Markdown(f"## {TITLE}", elem_id="app-title")
        with gr.Tabs():
            for label, tab_id, builder in TABS:
                with gr.Tab(label, id=tab_id):
                    builder(ctx)
    # Gradio's default is one running event per listener, which would make every user wait
    # for every other user's stream. Allow many at once (the handlers are async, so they do
    # not use threads) and bound the waiting line; a full queue shows "busy" in the page.
    demo.queue(
        default_concurrency_limit=settings.concurrency_limit,
        max_size=settings.max_queue,
    )
    return demo


def launch(demo: gr.Blocks, settings: Settings, **overrides: Any) -> Any:
    """Serve the app on settings.host:settings.port (overrides win, e.g. in tests)."""
    kwargs: dict[str, Any] = {
        "server_name": settings.host,
        "server_port": settings.port,
        "share": settings.gradio_share,
        "css": CSS,
        "theme": gr.themes.Soft(),
        "footer_links": ["api"],
        "ssr_mode": False,
        # Gradio's run history would keep a second copy of every streamed chat in the
        # browser's localStorage; the chat is already kept there (BrowserState).
        "run_history": False,
        "show_error": True,
    }
    kwargs.update(overrides)
    return demo.launch(**kwargs)
