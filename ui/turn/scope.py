"""Which page a turn belongs to: the keys its Stop button and its rate limit use.

A page's Stop button stops only that page's running turn (the stop key holds the page and
Gradio's session: one per page load), and its requests count against a per-client limit
shared by a group of pages: Compare and Battle both stream several columns at once, so they
share one count, and Chat has its own (ui/web/rate_limit.py counts them).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Scope:
    page: str  # the page whose Stop button stops the turn
    rate_group: str  # whose per-minute count the page's requests are

    def stop_key(self, session: str) -> str:
        return f"{self.page}:{session}"

    def rate_key(self, client: str) -> str:
        return f"{self.rate_group} {client}"


CHAT = Scope("chat", rate_group="chat")
COMPARE = Scope("compare", rate_group="columns")
BATTLE = Scope("battle", rate_group="columns")
