"""The Gradio app: one Blocks with a tab per page.

    demo = build_app(settings)          # tabs wired, queue configured
    launch(demo, settings)              # serve (blocking unless prevent_thread_lock)

More pages are added as entries of `TABS`: a label and a builder called inside its Tab.
A hidden "Shared" tab opens for `?share=TOKEN` links (ui/share_page.py); other deep links
(`?model=`, `?compare=`, `?q=`) are read by the pages' load handlers (ui/deep_links.py).
"""

from __future__ import annotations

import importlib.util
import logging
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import gradio as gr

from ui.backend_client import BackendClient
from ui.battle_page import build_battle_page, vote_logger
from ui.chat_page import SAVE_HISTORY_JS, build_chat_page
from ui.compare_page import CSS as COMPARE_CSS
from ui.compare_page import build_compare_page
from ui.deep_links import TAB_SHARED
from ui.leaderboard_page import build_leaderboard_page
from ui.model_directory import ModelDirectory
from ui.rate_limit import RateLimiter
from ui.security_headers import security_headers_middleware
from ui.settings import Settings
from ui.share import resolve_share_secret
from ui.share_page import CSS as SHARE_CSS
from ui.share_page import (
    SharedView,
    ShareHandlers,
    ShareService,
    layout_shared_view,
    wire_chat_share,
    wire_compare_share,
    wire_shared_view,
)
from ui.votes import VoteBook
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
    share: ShareHandlers  # share links (holds the key that also seals battle pairings)
    limiter: RateLimiter  # per-client request limit shared by Compare and Battle
    votes: VoteBook  # the vote store (LLM_VOTES): Battle writes, Leaderboard reads
    pages: dict[str, Any] = field(default_factory=dict)  # tab id -> what its builder returned
    tab: gr.Tab | None = None  # the Tab being built


PageBuilder = Callable[[AppContext], Any]


def _chat_tab(ctx: AppContext) -> Any:
    page = build_chat_page(
        ctx.demo, ctx.settings, ctx.client, ctx.models,
        tracker=ctx.tracker, prewarmer=ctx.prewarmer,
    )  # fmt: skip
    assert page.components is not None
    wire_chat_share(ctx.share, page.components)
    return page


def _compare_tab(ctx: AppContext) -> Any:
    page = build_compare_page(
        ctx.demo, ctx.settings, ctx.client, ctx.models,
        limiter=ctx.limiter, tracker=ctx.tracker, prewarmer=ctx.prewarmer,
    )  # fmt: skip
    assert page.components is not None
    wire_compare_share(ctx.share, page.components)
    return page


def _battle_tab(ctx: AppContext) -> Any:
    return build_battle_page(
        ctx.demo, ctx.settings, ctx.client, ctx.models, ctx.share.service.secret,
        limiter=ctx.limiter, tracker=ctx.tracker, votes=ctx.votes,
    )  # fmt: skip


def _leaderboard_tab(ctx: AppContext) -> Any:
    return build_leaderboard_page(ctx.demo, ctx.votes, ctx.tab)


# (tab label, tab id, builder). The tab ids are what deep links select (ui/deep_links.py).
TABS: list[tuple[str, str, PageBuilder]] = [
    ("Chat", "chat", _chat_tab),
    ("Compare", "compare", _compare_tab),
    ("Battle", "battle", _battle_tab),
    ("Leaderboard", "leaderboard", _leaderboard_tab),
]

CSS = (
    """
/* The banner slot takes no space while it is empty. */
#chat-banner:has(.prose:empty) { display: none; }
.chat-banner { padding: 8px 12px; border-radius: 8px; margin-bottom: 4px; font-size: 0.95em; }
.chat-banner-info { background: var(--color-accent-soft); }
.chat-banner-warning { background: #fff4ce; color: #5c4400; }
.chat-banner-error { background: #fde7e9; color: #7a1020; }
#model-info { font-size: 0.9em; opacity: 0.85; }
#composer { align-items: stretch; }
"""
    + COMPARE_CSS
    + SHARE_CSS
)


def build_app(
    settings: Settings,
    *,
    client: BackendClient | None = None,
) -> gr.Blocks:
    """The whole UI with its queue configured. `settings.backend_url` should be resolved
    (see `ui.embedded_engine.resolve_backend`); unset means the local default URL."""
    client = client or BackendClient(settings)
    directory = ModelDirectory(settings, client)
    # One key signs share links and seals battle pairings; it never leaves the server.
    share = ShareHandlers(ShareService(settings, resolve_share_secret(settings)), client, directory)
    with gr.Blocks(title=TITLE, fill_width=False) as demo:
        ctx = AppContext(
            demo, settings, client, directory,
            ColdStartTracker(settings.typical_cold_start), Prewarmer(client),
            share, RateLimiter(settings.rate_limit_per_minute),
            VoteBook(settings.votes, vote_logger()),
        )  # fmt: skip
        gr.Markdown(f"## {TITLE}", elem_id="app-title")
        with gr.Tabs() as tabs:
            for label, tab_id, builder in TABS:
                with gr.Tab(label, id=tab_id) as ctx.tab:
                    ctx.pages[tab_id] = builder(ctx)
            # Shown only when the page was opened with ?share=TOKEN.
            with gr.Tab("Shared", id=TAB_SHARED, visible=False) as shared_tab:
                shared = SharedView(share.service)
                layout_shared_view(shared, shared_tab)
        chat = ctx.pages["chat"].components
        save_chat = {
            "fn": None, "js": SAVE_HISTORY_JS, "inputs": [chat.chatbot], "outputs": [chat.store]
        }  # fmt: skip
        wire_shared_view(demo, shared, tabs, chat, ctx.pages["compare"].components, save_chat)
    # Gradio's default is one running event per listener, which would make every user wait
    # for every other user's stream. Allow many at once (the handlers are async, so they do
    # not use threads) and bound the waiting line; a full queue shows "busy" in the page.
    _skip_gradio_event_statistics()
    demo.queue(
        default_concurrency_limit=settings.concurrency_limit,
        max_size=settings.max_queue,
    )
    return demo


def _skip_gradio_event_statistics() -> None:
    """Gradio's queue rebuilds a pandas table of its last 10 000 events (per-function
    success rate and time percentiles, shown nowhere in this app) when every event starts
    streaming and ends: 2-7 ms of the UI's CPU per chat, the more the longer the process
    runs (bench/README.md). Recomputed every million events instead; an explicit
    GRADIO_ANALYTICS_CACHE_FREQUENCY still wins. Read when the queue is created."""
    os.environ.setdefault("GRADIO_ANALYTICS_CACHE_FREQUENCY", "1000000")


def _skip_missing_matplotlib() -> None:
    """Gradio tries `import matplotlib` twice per event and per streamed update (to switch
    its plotting backend). Without matplotlib installed, each failed import searches the
    whole sys.path: about 5 % of the UI's CPU while streaming. A None entry in sys.modules
    makes that import fail at once, as it would anyway."""
    if importlib.util.find_spec("matplotlib") is None:
        sys.modules.setdefault("matplotlib", None)  # type: ignore[arg-type]


def launch(demo: gr.Blocks, settings: Settings, **overrides: Any) -> Any:
    """Serve the app on settings.host:settings.port (overrides win, e.g. in tests)."""
    _skip_missing_matplotlib()
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
        # Gradio runs at most `max_threads` queued events at once across the whole app
        # (default 40), whatever the concurrency limits say: beyond it, streams wait for
        # others to finish. Room for every allowed stream plus page-load events.
        "max_threads": settings.concurrency_limit + 20,
        # nosniff, referrer policy, no framing by other sites (ui/security_headers.py).
        "app_kwargs": {"middleware": [security_headers_middleware()]},
    }
    kwargs.update(overrides)
    return demo.launch(**kwargs)
