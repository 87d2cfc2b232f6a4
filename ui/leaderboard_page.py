"""The Leaderboard tab: Elo ratings and win rates from the blind-battle vote log.

Reads the JSON-lines vote file (LLM_VOTE_LOG) each time it is shown; without one it says
how to configure it. On Cloud Run a local file is per instance and lost on scale-down: point
LLM_VOTE_LOG at a mounted volume (e.g. a Cloud Storage FUSE mount) or build the table from
the vote records in Cloud Logging.

API endpoint:  /leaderboard () -> Markdown table
"""

from __future__ import annotations

import logging
from typing import Any

import gradio as gr

from catalog import CATALOG
from ui.context import AppContext
from ui.settings import Settings
from ui.votes import format_leaderboard_markdown, leaderboard, read_vote_log

logger = logging.getLogger(__name__)

NOT_CONFIGURED = (
    "_No vote log is configured, so there is no leaderboard here._ Votes are still written "
    "to the application log as JSON lines. Set `LLM_VOTE_LOG` to a file path (e.g. "
    "`LLM_VOTE_LOG=votes.jsonl`) to collect them into a leaderboard."
)


def leaderboard_markdown(settings: Settings) -> str:
    """The leaderboard for the configured vote log, as Markdown."""
    path = settings.vote_log
    if not path:
        return NOT_CONFIGURED
    try:
        report = read_vote_log(path)
    except OSError as exc:
        logger.warning("Cannot read the vote log %s: %s", path, exc)
        return f"_The vote log cannot be read ({type(exc).__name__}); see the server log._"
    names = {spec.tag: spec.display_name for spec in CATALOG}
    table = format_leaderboard_markdown(leaderboard(report.votes), display_names=names)
    votes = len(report.votes)
    lines = [table, "", f"{votes} vote{'' if votes == 1 else 's'}."]
    if report.malformed:
        lines[-1] += (
            f" {report.malformed} malformed line{'' if report.malformed == 1 else 's'} skipped."
        )
    lines.append(
        "Elo starts at 1000 (K = 32, votes in order); a tie or “both are bad” counts as a draw."
    )
    return "\n".join(lines)


def build_leaderboard_page(demo: gr.Blocks, ctx: AppContext, tab: gr.Tab | None = None) -> Any:
    """The table and a Refresh button. The file is read when the tab is opened (`tab`),
    not on every page load; without a tab, on page load."""
    table = gr.Markdown("", elem_id="leaderboard")
    refresh = gr.Button("Refresh", elem_id="leaderboard-refresh", size="sm")

    def show() -> str:
        return leaderboard_markdown(ctx.settings)

    refresh.click(show, outputs=[table], api_name="leaderboard", show_progress="hidden")
    quiet: dict[str, Any] = {"api_visibility": "undocumented", "show_progress": "hidden"}
    if tab is not None:
        tab.select(show, outputs=[table], **quiet)
    else:
        demo.load(show, outputs=[table], **quiet)
    return table
