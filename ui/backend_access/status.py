"""What the backend is doing right now, as every open page shows it, and what GPU time costs.

`BackendWatch` is one per process (in AppContext); `view()` is what it shows, as data
(ui/view/render.py `backend_status_html` draws it). It is told what happened by the code
that talks to the backend: the pre-warm (ui/turn/warming.py `Prewarmer`: waking, listing,
loading, done or failed), the chat turns (ui/turn/: warming phases seen by the
`PhaseDetector` from /api/version and /api/ps, first tokens, replies and their timings,
errors). Reading it costs no backend request: an open page's refresh (ui/pages/status_bar.py)
reads this object only, so an idle page never keeps a GPU instance awake.

    state   meaning                                                   from
    unknown nothing seen yet                                          start of the process
    asleep  no answer for longer than the backend's idle time         clock + last answer
    starting the backend does not answer yet: an instance starts      pre-warm, detector
    loading  the backend answers; <model> is being loaded             pre-warm, detector
             (only a backend that reports loads: Ollama's API; an OpenAI-compatible
             server loaded its model at start, so its answer after "starting" is "ready")
    ready    a model answered (or finished loading)                   pre-warm, replies
    unreachable the backend refused, failed or timed out (why)        pre-warm, replies

Cost (an estimate, said so wherever shown): GPU instance-seconds x price per second, a
reply's share divided by the requests one instance serves at once
(`settings.gpu_concurrency`); a cold start is paid by one request for the whole instance.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from ui.backend_access.labels import display_name

log = logging.getLogger(__name__)
RECENT_S = 30.0  # a backend that answered this recently is not starting an instance
_URL = re.compile(r"https?://\S+")

State = Literal["unknown", "asleep", "starting", "loading", "ready", "unreachable"]


# === cost =================================================================================
@dataclass(frozen=True)
class GpuPrice:
    """The GPU backend's price: per instance-hour, and how many requests share an instance."""

    per_hour: float  # USD per instance-hour (GPU + its CPU and memory)
    concurrency: int  # requests one instance serves at once

    @property
    def per_second(self) -> float:
        return self.per_hour / 3600.0

    def reply_cost(self, seconds: float) -> float:
        """One reply's share of the instance for `seconds` (it shares it with
        concurrency - 1 others when the instance is fully used)."""
        return max(seconds, 0.0) * self.per_second / max(self.concurrency, 1)

    def cold_start_cost(self, seconds: float) -> float:
        """An instance starting and loading a model serves nobody meanwhile: all of it."""
        return max(seconds, 0.0) * self.per_second


def money(usd: float) -> str:
    """A small amount of money, readable: $0.00042, $0.0123, $1.20."""
    if usd >= 0.1:
        return f"${usd:.2f}"
    if usd >= 0.001:
        return f"${usd:.4f}"
    return f"${usd:.5f}"


def reply_cost_text(price: GpuPrice, seconds: float) -> str:
    """The cost line under a reply: money and seconds, marked as an estimate."""
    share = f"1/{price.concurrency} of " if price.concurrency > 1 else ""
    return (
        f"≈ {money(price.reply_cost(seconds))} GPU cost (estimate: {share}an instance "
        f"for {seconds:.1f} s at {money(price.per_hour)}/h)"
    )


def cold_start_cost_text(price: GpuPrice, seconds: float) -> str:
    return f"≈ {money(price.cold_start_cost(seconds))} for {seconds:.1f} s of GPU instance"


# === state ================================================================================
@dataclass(frozen=True)
class StatusView:
    """What the status line shows."""

    state: State
    text: str
    detail: str = ""

    @property
    def settled(self) -> bool:
        """Nothing is under way: the page may refresh slowly."""
        return self.state in ("ready", "asleep")


class BackendWatch:
    """The backend's last known state (see the module docstring). Not thread-safe: it is
    used from the app's event loop only."""

    def __init__(
        self,
        price: GpuPrice,
        *,
        idle_timeout: float,
        typical: Callable[[], float],
        clock: Callable[[], float] = time.monotonic,
        reports_loads: Callable[[str | None], bool] = lambda _model: True,
    ) -> None:
        self.price = price
        # Whether the backend of a model (None: the default one) reports loads
        # (BackendClient.reports_loads): only then does an answer after "starting" mean
        # "loading" rather than "ready".
        self.reports_loads = reports_loads
        self.idle_timeout = idle_timeout  # after this long without an answer: asleep
        self.typical = typical  # typical cold start (ColdStartTracker.typical)
        self.clock = clock
        self.state: State = "unknown"
        self.model: str | None = None
        self.reason = ""  # why it is unreachable
        self.since = clock()  # when the current state began
        self.last_answer: float | None = None  # last time the backend answered
        self.last_cold_start: float | None = None  # seconds, the last one seen
        self.last_reply: tuple[float, float] | None = None  # (seconds, when)

    def _enter(self, state: State, model: str | None = None) -> None:
        cold = ("starting", "loading")
        if self.state in cold and state in cold:
            pass  # one cold start: elapsed counts from the instance start
        elif state != self.state or (model is not None and model != self.model):
            self.since = self.clock()
        if state != self.state:
            log.debug("backend status: %s -> %s (%s)", self.state, state, model or self.model)
        self.state = state
        if model is not None:
            self.model = model

    # --- what happened ------------------------------------------------------------------
    def waking(self) -> None:
        """A request is held without an answer: an instance is starting."""
        if self.state in ("starting", "loading"):
            return
        recent_s = min(RECENT_S, self.idle_timeout)
        recent = self.last_answer is not None and self.clock() - self.last_answer < recent_s
        if self.state == "ready" and recent:
            return  # a slow probe of a backend that just answered: not a new instance
        self._enter("starting")

    def answered(self) -> None:
        """The backend answered something (a model list, a probe)."""
        self.last_answer = self.clock()
        if self.state in ("unknown", "asleep", "starting", "unreachable"):
            loads_next = self.state == "starting" and self.reports_loads(self.model)
            self._enter("loading" if loads_next else "ready")

    def loading(self, model: str | None) -> None:
        """The backend answers; `model` (None: not to be named) is loading."""
        self.last_answer = self.clock()
        if self.state == "ready" and model in (None, self.model):
            return  # it answered with this model already (a pre-warm that came second)
        self._enter("loading", model)

    def ready(self, model: str | None, *, cold_start_s: float | None = None) -> None:
        self.last_answer = self.clock()
        if cold_start_s is None and self.state in ("starting", "loading"):
            cold_start_s = self.clock() - self.since
        if cold_start_s is not None:
            self.last_cold_start = cold_start_s
        self._enter("ready", model)
        self.reason = ""

    def replied(self, model: str | None, seconds: float) -> None:
        """A reply finished after `seconds` of generation (its cost is this share)."""
        self.ready(model)
        self.last_reply = (seconds, self.clock())

    def failed(self, reason: str) -> None:
        """The backend cannot be used right now; `reason` is in plain words."""
        self._enter("unreachable")
        self.reason = _URL.sub("the backend", reason)  # addresses stay in the log

    # --- what the page shows ------------------------------------------------------------
    def view(self) -> StatusView:
        now = self.clock()
        state = self.state
        if (
            state == "ready"
            and self.last_answer is not None
            and now - self.last_answer > self.idle_timeout
        ):
            state = "asleep"
        elapsed = now - self.since
        typical = self.typical()
        price = self.price
        if state == "unknown":
            return StatusView(state, "Checking the model backend…")
        if state == "asleep":
            return StatusView(
                state,
                "The GPU backend is asleep (scaled to zero)",
                f"a cold start takes ~{typical:.0f} s, "
                f"{cold_start_cost_text(price, typical)} (estimate)",
            )
        if state == "starting":
            return StatusView(
                state,
                f"Starting a GPU instance… {elapsed:.0f} s",
                f"usually ~{typical:.0f} s; a cold start costs "
                f"{cold_start_cost_text(price, typical)} (estimate)",
            )
        if state == "loading":
            name = display_name(self.model) if self.model else "the model"
            return StatusView(
                state,
                f"Loading {name} into GPU memory… {elapsed:.0f} s",
                f"usually ~{typical:.0f} s from a cold start",
            )
        if state == "unreachable":
            return StatusView(state, "The model backend cannot be used right now:", self.reason)
        parts = []
        if self.last_cold_start is not None:
            parts.append(f"last cold start {cold_start_cost_text(price, self.last_cold_start)}")
        if self.last_reply is not None:
            parts.append(f"last reply {money(price.reply_cost(self.last_reply[0]))}")
        parts.append(f"GPU at {money(price.per_hour)}/h ÷ {price.concurrency} (estimates)")
        return StatusView(
            state,
            f"Ready: {display_name(self.model)}" if self.model else "Ready",
            " · ".join(parts),
        )
