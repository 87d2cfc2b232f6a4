"""What every page gets: the app's collaborators, built once per app.

    ctx = AppContext.create(settings)      # in ui/app.py
    build_chat_page(demo, ctx)             # every page builder takes the same object

Nothing here holds a conversation: the UI stays stateless. What is kept is per process
(the model list cache, the rate-limit counts, the running streams' stop signals, the
models' slots, the open event streams, the typical cold start, the pre-warms in flight)
and shared by all pages.
"""

from __future__ import annotations

from dataclasses import dataclass

from ui.backend_access.client import BackendClient
from ui.backend_access.models import ModelDirectory
from ui.backend_access.status import BackendWatch, GpuPrice
from ui.settings import Settings
from ui.share.format import resolve_share_secret
from ui.share.reply_mac import ReplyMacs
from ui.turn.fair_slots import FairSlots
from ui.turn.stop_signals import StopSignals
from ui.turn.warming import ColdStartTracker, Prewarmer
from ui.votes.book import VoteBook, vote_logger
from ui.web.event_streams import EventStreams
from ui.web.rate_limit import RateLimiter, StreamBudget


@dataclass(frozen=True)
class AppContext:
    settings: Settings
    client: BackendClient  # the one client of the model backends
    models: ModelDirectory  # which models are offered; checks model names
    limiter: RateLimiter  # requests per client per minute (counted per scope, ui/turn/)
    vote_limiter: RateLimiter  # battle votes per client per 24 hours
    streams: StreamBudget  # replies one client may have generating at once (all pages)
    slots: FairSlots  # each model's backend slots, shared out round-robin by client
    event_streams: EventStreams  # whose event stream is open: unread turns are cancelled
    stops: StopSignals  # running turns, found by the Stop buttons
    tracker: ColdStartTracker  # typical cold start, learned by this process (all pages)
    prewarmer: Prewarmer  # wakes a backend and loads a model in the background
    secret: bytes  # signs share links and seals battle pairings; never leaves the server
    reply_macs: ReplyMacs  # vouches for the replies this server generated (shared views)
    votes: VoteBook  # the vote store (LLM_VOTES): Battle writes, Leaderboard reads
    watch: BackendWatch  # the backend's state as every page's status line shows it

    @classmethod
    def create(cls, settings: Settings, client: BackendClient | None = None) -> AppContext:
        client = client or BackendClient(settings)
        tracker = ColdStartTracker(settings.typical_cold_start)
        watch = BackendWatch(
            GpuPrice(settings.gpu_price_per_hour, settings.gpu_concurrency),
            idle_timeout=settings.backend_idle_timeout,
            typical=lambda: tracker.typical,
            reports_loads=client.reports_loads,
        )
        models = ModelDirectory(settings, client)
        models.on_answer.append(watch.answered)
        models.on_held.append(watch.waking)
        secret = resolve_share_secret(settings)
        return cls(
            settings=settings,
            client=client,
            models=models,
            limiter=RateLimiter(settings.rate_limit_per_minute),
            vote_limiter=RateLimiter(settings.votes_per_client_per_day, window=24 * 3600),
            streams=StreamBudget(settings.streams_per_client),
            slots=FairSlots(settings.model_slots or settings.gpu_concurrency),
            event_streams=EventStreams(settings.event_stream_grace),
            stops=StopSignals(),
            tracker=tracker,
            prewarmer=Prewarmer(client, watch=watch, remember=models.remember),
            secret=secret,
            reply_macs=ReplyMacs(secret),
            votes=VoteBook(settings.votes, vote_logger()),
            watch=watch,
        )
