"""The Gradio app: one Blocks with a tab per page.

    demo = build_app(settings)          # tabs wired, queue configured
    launch(demo, settings)              # serve (blocking unless prevent_thread_lock)

More pages are added as entries of `TABS`: a label and a builder called inside its Tab.
A hidden "Shared" tab opens for `?share=TOKEN` links (ui/pages/share.py); other deep links
(`?model=`, `?compare=`, `?q=`) are read by the pages' load handlers (ui/share/deep_links.py).
"""

from __future__ import annotations

import importlib.util
import logging
import os
import sys
import weakref
from collections.abc import Callable
from typing import Any

import gradio as gr

from ui.backend_access.client import BackendClient
from ui.context import AppContext
from ui.pages.battle import build_battle_page
from ui.pages.chat import build_chat_page
from ui.pages.compare import build_compare_page
from ui.pages.leaderboard import build_leaderboard_page
from ui.pages.page_load import PageLoads
from ui.pages.share import (
    SharedView,
    ShareHandlers,
    layout_shared_view,
    wire_chat_share,
    wire_compare_share,
    wire_shared_view,
)
from ui.pages.status_bar import layout_status_bar, wire_status_bar
from ui.settings import Settings
from ui.share.deep_links import TAB_SHARED
from ui.view.a11y import A11Y_JS, layout_live_regions
from ui.view.render import CSS, NOTE_TOGGLE_JS
from ui.web.event_streams import EventStreams, event_streams_middleware
from ui.web.request_limits import request_limits_middleware
from ui.web.security_headers import security_headers_middleware
from ui.web.static_assets import static_assets_middleware

logger = logging.getLogger(__name__)

TITLE = "Serverless LLM Chat"
DESCRIPTION = (
    "Chat with open LLMs (Gemma, Llama, Mistral) on serverless GPUs: live backend status "
    "while a GPU starts, side-by-side comparison, blind battles and share links."
)
# What search results and link previews show (Gradio's template has none of its own).
HEAD = f'<meta name="description" content="{DESCRIPTION}">'
SYSTEM_FONTS = ["system-ui", "-apple-system", "Segoe UI", "Roboto", "sans-serif"]
SYSTEM_MONO_FONTS = ["ui-monospace", "SFMono-Regular", "Menlo", "Consolas", "monospace"]


def accessible_theme() -> gr.themes.Base:
    """Gradio's Soft theme with the colours that fall below WCAG AA's 4.5:1 for text (issue
    17; tests/test_accessibility.py) darkened: its block labels (#6366f1 on #e0e7ff, 3.6:1),
    its primary buttons (white on #6366f1, 4.46:1; hovered, on #818cf8, 3:1), its subdued
    text (slider maxima, the footer's links: #9ca3af, 2.5:1), and hovered buttons in the
    dark theme (white on #6366f1). What they become, on the same backgrounds: 6.4:1 (labels,
    #4338ca), 6.3:1 and 7.9:1 (white on #4f46e5 and #4338ca), 7.2:1 or more (#4b5563).

    The phone's own fonts (issue 23): Soft's Montserrat and IBM Plex Mono are 195 KB of
    font files, half of the page's weight on load, and text waited for them."""
    return gr.themes.Soft(font=SYSTEM_FONTS, font_mono=SYSTEM_MONO_FONTS).set(
        block_label_text_color="*primary_700",
        block_title_text_color="*primary_700",
        button_primary_background_fill="*primary_600",
        button_primary_background_fill_hover="*primary_700",
        button_primary_background_fill_dark="*primary_600",
        button_primary_background_fill_hover_dark="*primary_700",
        button_secondary_background_fill_hover_dark="*primary_700",
        body_text_color_subdued="*neutral_600",
        # The selected tab's name (and other accents): #6366f1 was 4.47:1 on white; #4f46e5
        # is 6.3:1. The theme has no dark variant of it: ui/view/render.py's CSS sets one.
        color_accent="*primary_600",
    )


# A tab builder lays out its tab's content inside the current Tab and wires its events (its
# part of the page load goes to the PageLoads); it returns the page's components (others
# connect to them: share, continue from a copy).
TabBuilder = Callable[[gr.Blocks, AppContext, gr.Tab, ShareHandlers, PageLoads], Any]

# The open event streams of each app that `build_app` made: the turns read it, the ASGI
# middleware that `launch` installs fills it (ui/web/event_streams.py).
_EVENT_STREAMS: weakref.WeakKeyDictionary[gr.Blocks, EventStreams] = weakref.WeakKeyDictionary()


def _chat_tab(
    demo: gr.Blocks, ctx: AppContext, tab: gr.Tab, share: ShareHandlers, loads: PageLoads
) -> Any:
    chat = build_chat_page(demo, ctx, loads)
    wire_chat_share(share, chat.share_inputs())
    return chat


def _compare_tab(
    demo: gr.Blocks, ctx: AppContext, tab: gr.Tab, share: ShareHandlers, loads: PageLoads
) -> Any:
    compare = build_compare_page(demo, ctx, loads)
    wire_compare_share(share, compare.share_inputs(), compare.share_row)
    return compare


def _battle_tab(
    demo: gr.Blocks, ctx: AppContext, tab: gr.Tab, share: ShareHandlers, loads: PageLoads
) -> Any:
    return build_battle_page(demo, ctx, loads)


def _leaderboard_tab(
    demo: gr.Blocks, ctx: AppContext, tab: gr.Tab, share: ShareHandlers, loads: PageLoads
) -> Any:
    return build_leaderboard_page(demo, ctx, tab)


# (tab label, tab id, builder). The tab ids are what deep links select (ui/share/deep_links.py).
TABS: list[tuple[str, str, TabBuilder]] = [
    ("Chat", "chat", _chat_tab),
    ("Compare", "compare", _compare_tab),
    ("Battle", "battle", _battle_tab),
    ("Leaderboard", "leaderboard", _leaderboard_tab),
]


def build_app(
    settings: Settings,
    *,
    client: BackendClient | None = None,
) -> gr.Blocks:
    """The whole UI with its queue configured. `settings.backend_url` should be resolved
    (see `ui.backend_access.embedded.resolve_backend`); unset means the local default URL."""
    ctx = AppContext.create(settings, client)
    share = ShareHandlers(ctx)
    pages: dict[str, Any] = {}  # tab id -> the components its builder returned
    loads = PageLoads()  # every page's part of the one page-load request
    with gr.Blocks(title=TITLE, fill_width=False) as demo:
        gr.Markdown(f"## {TITLE}", elem_id="app-title")
        layout_live_regions()  # what screen readers hear (ui/view/a11y.py), before any change
        status = layout_status_bar(ctx)  # the backend's state, above every page
        with gr.Tabs() as tabs:
            for label, tab_id, builder in TABS:
                with gr.Tab(label, id=tab_id) as tab:
                    pages[tab_id] = builder(demo, ctx, tab, share, loads)
            # Shown only when the page was opened with ?share=TOKEN.
            with gr.Tab("Shared", id=TAB_SHARED, visible=False) as shared_tab:
                shared = SharedView(share.service)
                layout_shared_view(shared, shared_tab)
        demo.load(fn=None, js=NOTE_TOGGLE_JS)  # accessible note toggles (ui/view/render.py)
        chat, compare = pages["chat"], pages["compare"]
        wire_status_bar(demo, ctx, status, [chat.picker(), compare.picker()], loads)
        demo.load(fn=None, js=A11Y_JS)  # spoken updates, button names, Escape (ui/view/a11y.py)
        copied = [chat.save_history(), chat.picker().then_follow(), compare.picker().then_follow()]
        wire_shared_view(
            demo, shared, tabs, loads, chat.copy_outputs(), compare.copy_outputs(), copied
        )
        loads.wire(demo)
    # Gradio's default is one running event per listener, which would make every user wait
    # for every other user's stream. Allow many at once (the handlers are async, so they do
    # not use threads) and bound the waiting line; a full queue shows "busy" in the page.
    _EVENT_STREAMS[demo] = ctx.event_streams
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
    # Uvicorn replaces the client address with X-Forwarded-For when the peer is a trusted
    # proxy, by default any local process (127.0.0.1): a script on the same host, or any
    # client behind a local reverse proxy that passes the header on, could then pose as a
    # new client per request (rate limits, vote caps). Only configured proxies are trusted;
    # uvicorn reads this when Gradio creates its server config.
    os.environ["FORWARDED_ALLOW_IPS"] = settings.trusted_proxies
    kwargs: dict[str, Any] = {
        "server_name": settings.host,
        "server_port": settings.port,
        "share": settings.gradio_share,
        "css": CSS,
        "theme": accessible_theme(),
        "head": HEAD,
        "footer_links": ["api"],
        "ssr_mode": False,
        # Gradio's run history would keep a second copy of every streamed chat in the
        # browser's localStorage; the chat is already kept there (BrowserState).
        "run_history": False,
        # Only gr.Error messages (written for users) reach the browser; any other exception
        # (Gradio's pydantic validation text, object reprs for missing inputs) shows as a
        # bare "Error" and its detail goes to the log.
        "show_error": False,
        # Gradio runs at most `max_threads` queued events at once across the whole app
        # (default 40), whatever the concurrency limits say: beyond it, streams wait for
        # others to finish. Room for every allowed stream plus page-load events.
        "max_threads": settings.concurrency_limit + 20,
        # Gradio refuses larger uploads itself too (ui/web/request_limits.py caps the body).
        "max_file_size": settings.image_max_bytes,
        # nosniff, referrer policy, no framing by other sites (ui/web/security_headers.py).
        # Body size caps (uploads: the image cap), events per client (ui/web/request_limits.py).
        "app_kwargs": {
            "middleware": [
                security_headers_middleware(),
                # Compressed, long-cached page files (ui/web/static_assets.py).
                *static_assets_middleware(),
                request_limits_middleware(
                    settings.max_request_bytes, settings.events_per_minute, settings.image_max_bytes
                ),
                # Who reads their events: unread or dropped turns end (ui/web/event_streams.py).
                event_streams_middleware(
                    _EVENT_STREAMS.get(demo) or EventStreams(settings.event_stream_grace)
                ),
            ]
        },
    }
    kwargs.update(overrides)
    return demo.launch(**kwargs)
