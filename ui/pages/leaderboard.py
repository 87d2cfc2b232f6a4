"""The Leaderboard tab: Bradley-Terry ratings with 95 % intervals from the vote store.

The store keeps per-pair counts (ui/votes/store.py), so showing the table reads
O(models²) aggregates however many votes there are; the fit runs on those counts
(ui/votes/ratings.py). The store is read when the tab is opened or refreshed.

API endpoint:  /leaderboard () -> Markdown table
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import gradio as gr

from catalog import CATALOG
from ui.context import AppContext
from ui.votes.book import VoteBook, format_leaderboard_markdown
from ui.votes.ratings import BOOTSTRAP_ROUNDS
from ui.votes.store import VoteStoreError

logger = logging.getLogger(__name__)

STORE_UNREACHABLE = (
    "_The leaderboard cannot be read just now (the vote store did not answer). "
    "Try Refresh in a moment; chatting is not affected._"
)
METHOD_NOTE = (
    "Ratings are Bradley-Terry maximum-likelihood estimates (scale 400, average 1000), as "
    "Chatbot Arena computes them; a tie or “both are bad” counts as half a win for each "
    f"side. The interval is a 95 % bootstrap interval ({BOOTSTRAP_ROUNDS} resamples of the "
    "votes); models whose intervals overlap share a rank."
)


def leaderboard_markdown(votes: VoteBook) -> str:
    """The leaderboard as Markdown (a plain note when the store cannot be read)."""
    try:
        ratings = votes.ratings(models=())
    except (VoteStoreError, OSError, ImportError) as exc:
        logger.warning("Cannot read the vote store: %s", exc)
        return STORE_UNREACHABLE
    names = {spec.tag: spec.display_name for spec in CATALOG}
    table = format_leaderboard_markdown(ratings, display_names=names)
    if not any(r.votes for r in ratings):
        return table
    total = sum(r.votes for r in ratings) // 2  # each vote counts for both its models
    return "\n".join([table, "", f"{total} vote{'' if total == 1 else 's'}. {METHOD_NOTE}"])


def build_leaderboard_page(demo: gr.Blocks, ctx: AppContext, tab: gr.Tab | None = None) -> Any:
    """The table and a Refresh button. The store is read when the tab is opened (`tab`),
    not on every page load; without a tab, on page load."""
    table = gr.Markdown("", elem_id="leaderboard")
    refresh = gr.Button("Refresh", elem_id="leaderboard-refresh", size="sm")

    async def show() -> str:
        return await asyncio.to_thread(leaderboard_markdown, ctx.votes)

    refresh.click(show, outputs=[table], api_name="leaderboard", show_progress="hidden")
    quiet: dict[str, Any] = {"api_visibility": "undocumented", "show_progress": "hidden"}
    if tab is not None:
        tab.select(show, outputs=[table], **quiet)
    else:
        demo.load(show, outputs=[table], **quiet)
    return table
