"""One reply as it streams, as data: its text, waiting state, figures, and how it ended.

`ReplyProgress.apply` takes the events of one column's stream (TokenDelta, ReplyDone from
the backend client; WarmingStatus, SlotWait while it waits; Failed when it broke) and says
whether anything visible changed; `finish` ends it: with Ollama's final stats it is done,
with an error it failed, without either the user stopped it. `view` gives the column's
`ColumnView`, which ui/view/ draws (banners, the reply's note, the status line): nothing
here makes HTML or display text for a figure.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from catalog import normalize_tag
from ui.backend_access.client import ReplyDone, ReplyStats, TokenDelta
from ui.backend_access.labels import display_name
from ui.backend_access.status import GpuPrice
from ui.share.reply_mac import ReplyClaim, ReplyMacs
from ui.turn.fair_slots import SlotWait
from ui.turn.figures import ReplyCost, ReplyFigures
from ui.turn.history import Message, image_digest
from ui.turn.prepare import ColumnRequest
from ui.turn.warming import WarmingStatus

logger = logging.getLogger(__name__)

Phase = Literal["waiting", "answering", "done", "stopped", "failed"]
Waiting = WarmingStatus | SlotWait  # why no token has come yet (None: nothing to say)
EMPTY_REPLY_NOTICE = "The model returned an empty reply."


@dataclass(frozen=True)
class Failed:
    """A column's stream failed; `user_message` says why."""

    user_message: str


@dataclass(frozen=True)
class ColumnView:
    """What a column shows right now, as data."""

    model: str  # the model's tag (a blind column never shows it)
    label: str  # how texts name the model ("Model A" when blind)
    blind: bool  # a battle's column: no model name, no figures before the vote
    display: list[Message]  # the conversation as shown, ending with the user's message
    phase: Phase
    text: str = ""  # the reply so far
    waiting: Waiting | None = None  # while the backend gets ready or the slots are full
    error: str | None = None  # phase "failed": what went wrong, for the user
    # Phase "done": every figure (None when blind: speed hints at the model); "stopped":
    # the UI's own timings only.
    figures: ReplyFigures | None = None
    notices: tuple[str, ...] = ()  # said in the note under the reply
    cost: ReplyCost | None = None  # phase "done", when a GPU price is known
    mac: str | None = None  # phase "done": the server's MAC over the reply
    retry_hint: bool = False  # the page has a retry button (error notes say so)

    @property
    def finished(self) -> bool:
        return self.phase in ("done", "stopped", "failed")


class ReplyProgress:
    """One reply as it streams (see the module docstring)."""

    def __init__(
        self,
        request: ColumnRequest,
        *,
        started: float,
        retry_hint: bool = False,
        clock: Callable[[], float] = time.monotonic,
        price: GpuPrice | None = None,
        macs: ReplyMacs | None = None,
    ) -> None:
        self.request = request
        self.price = price  # for the cost estimate under the reply (None: not shown)
        self.macs = macs  # vouches for a finished reply in its note (None: no MAC)
        self.started = started
        self.retry_hint = retry_hint
        self.clock = clock
        self.text = ""
        self.first_token_s: float | None = None
        self.total_s: float | None = None
        self.stats: ReplyStats | None = None
        self.error: str | None = None
        self.waiting: Waiting | None = None
        self.figures: ReplyFigures | None = None
        self.notices: tuple[str, ...] = ()
        self.cost: ReplyCost | None = None
        self.mac: str | None = None
        self.finished = False

    def apply(self, event: object) -> bool:
        if isinstance(event, TokenDelta):
            if self.first_token_s is None:
                self.first_token_s = self.clock() - self.started
            self.text += event.text
            self.waiting = None  # the reply is flowing: the banner goes
            return True
        if isinstance(event, SlotWait):
            served = not event.waiting  # the banner goes
            shown = dataclasses.replace(event, model=self.request.label)
            return self._wait(None if served else shown)
        if isinstance(event, WarmingStatus):
            if self.request.blind:  # the banner names the model it loads; a battle must not
                event = dataclasses.replace(event, model=self.request.label)
            return self._wait(None if event.phase == "ready" else event)
        if isinstance(event, ReplyDone):
            self.stats = event.stats
            return False
        if isinstance(event, Failed):
            self.error = self._hide_names(event.user_message)
            return False
        raise TypeError(f"not a reply event: {event!r}")

    def _wait(self, waiting: Waiting | None) -> bool:
        before, self.waiting = self.waiting, waiting
        return waiting != before

    def finish(self) -> None:
        self.finished = True
        self.waiting = None
        self.total_s = total_s = self.clock() - self.started
        self.notices = tuple(self.request.notices)
        if self.error is not None:
            return
        if self.stats is None:  # the stream ended without Ollama's final line: Stop
            self.figures = ReplyFigures.of_reply(None, ttft_s=self.first_token_s, total_s=total_s)
            return
        if not self.text:
            self.notices += (EMPTY_REPLY_NOTICE,)
        if self.request.blind:
            return  # speed and load time hint at which model answered: shown after the vote
        self.figures = figures = ReplyFigures.of_reply(
            self.stats, ttft_s=self.first_token_s, total_s=total_s
        )
        if self.price is not None:
            self.cost = ReplyCost(gpu_seconds(self.stats, total_s), self.price)
        if self.macs is not None:
            self.mac = self.macs.mac(self._claim(figures))

    def _claim(self, figures: ReplyFigures) -> ReplyClaim:
        """What the MAC vouches for (ui/share/reply_mac.py): a share of the reply can then show
        that this server generated it."""
        messages = self.request.messages
        system = messages[0]["content"] if messages and messages[0]["role"] == "system" else ""
        display = self.request.display
        question = display[-1]["content"] if display else ""
        image = display[-1].get("image") if display else None
        digest = image_digest(image["path"]) if image else None
        return ReplyClaim(self.request.model, system, question, self.text, figures, digest)

    @property
    def phase(self) -> Phase:
        if self.finished:
            if self.error is not None:
                return "failed"
            return "done" if self.stats is not None else "stopped"
        return "answering" if self.text else "waiting"

    def view(self) -> ColumnView:
        request = self.request
        return ColumnView(
            model=request.model,
            label=request.label,
            blind=request.blind,
            display=request.display,
            phase=self.phase,
            text=self.text,
            waiting=self.waiting,
            error=self.error,
            figures=self.figures,
            notices=self.notices,
            cost=self.cost,
            mac=self.mac,
            retry_hint=self.retry_hint,
        )

    def log(self) -> None:
        model = self.request.model
        if self.error is not None:
            chars = len(self.text)
            logger.warning("Reply from %s failed after %d chars: %s", model, chars, self.error)
            return
        logger.info(
            "Reply from %s %s: %s tokens, first token %s s, total %.2f s",
            model,
            "done" if self.stats else "stopped by the user",
            self.stats.eval_count if self.stats else "-",
            f"{self.first_token_s:.2f}" if self.first_token_s is not None else "-",
            self.total_s or 0.0,
        )

    def _hide_names(self, text: str) -> str:
        if not self.request.blind:
            return text
        model = self.request.model
        for name in {model, display_name(model), normalize_tag(model)}:
            text = text.replace(name, self.request.label)
        return text


def gpu_seconds(stats: ReplyStats, measured_s: float) -> float:
    """The instance-seconds a reply used: the backend's own total less its model load (a
    load belongs to the cold start, costed apart); without the backend's figure, what the
    UI measured from send to the last token."""
    total = stats.total_seconds
    if total is None:
        return measured_s
    return max(total - (stats.load_seconds or 0.0), 0.0)
