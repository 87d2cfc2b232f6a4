"""What a fresh page asks the server for, in one request (issue 23).

    loads = PageLoads()
    loads.add(page.load, [picker, info, ...])        # each page, while it is built
    loads.then(fn=page.prewarm, inputs=[picker])     # an event chained after the load
    loads.wire(demo)                                 # in ui/app.py, once every page is in

Every page used to have its own load event (Chat's picker, Compare's picker, Battle's image
control, the shared view), and each filled picker set off its own change events (model
description, image control, column headers): ten requests and ten rounds of updates before
a phone's page settled, each a task on its main thread, and ten events per visitor for the
server. One load handler now runs every page's part at once and answers with all of their
updates; what follows from a pick comes with it (ui/pages/status_bar.py `Picker`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import gradio as gr

# A page's part of the load: the request (deep links are in its query) -> one update per
# output, in order.
LoadPart = Callable[[gr.Request], Awaitable[Sequence[Any]]]


@dataclass
class PageLoads:
    parts: list[tuple[LoadPart, list[Any]]] = field(default_factory=list)
    after: list[dict[str, Any]] = field(default_factory=list)

    def add(self, part: LoadPart, outputs: Sequence[Any]) -> None:
        self.parts.append((part, list(outputs)))

    def then(self, **event: Any) -> None:
        """An event to run once the load's updates are in (e.g. pre-warm the picked model)."""
        self.after.append(event)

    def wire(self, demo: gr.Blocks) -> Any:
        """The page's one load event (chain what should follow it with `.then`)."""
        parts = list(self.parts)

        async def page_load(request: gr.Request) -> tuple[Any, ...]:
            results = await asyncio.gather(*(part(request) for part, _ in parts))
            updates: list[Any] = []
            for (part, outputs), result in zip(parts, results, strict=True):
                if len(result) != len(outputs):
                    raise ValueError(f"{part.__qualname__} gave {len(result)} of {len(outputs)}")
                updates += result
            return tuple(updates)

        outputs = [output for _, part_outputs in parts for output in part_outputs]
        load = demo.load(
            page_load, outputs=outputs, api_visibility="undocumented", show_progress="hidden"
        )
        for event in self.after:
            load.then(**event)
        return load
