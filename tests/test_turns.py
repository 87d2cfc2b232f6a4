"""The turn pipeline (ui/turn/) on its own: no Gradio app, the real engine behind it.

A request is the shape Gradio hands the handlers (a session hash and the client address);
everything else is the real code: checks, rate limit, context fitting, the N-column
streamer with its stop signals, pacing and warming, and the reply timings.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest

from ui.backend_access.client import ReplyDone, ReplyStats, TokenDelta
from ui.backend_access.models import ModelRejected
from ui.context import AppContext
from ui.errors import InputRejected
from ui.settings import Settings
from ui.share.reply_mac import ReplyClaim, ReplyMacs
from ui.turn.checks import check_message, check_models, check_parameters, parse_histories
from ui.turn.figures import NoteData, read_note_data
from ui.turn.prepare import Column, ColumnRequest, PreparedTurn, prepare
from ui.turn.reply import ColumnView, Failed, ReplyProgress
from ui.turn.scope import CHAT, COMPARE, Scope
from ui.turn.stream import stop_turn, stream_turn, turn_running
from ui.turn.warming import WarmingStatus
from ui.view.notes import WARNING_SIGN, column_messages
from ui.view.render import column_status_html, waiting_html

TEST_SCOPE = Scope("test", rate_group="test")

pytestmark = pytest.mark.timeout(180)

SMOL = "smollm2:135m"
GEMMA = "gemma3:270m"
GHOST = "ghost:1b"  # allowed, but the engine does not have it


def make_ctx(engine: str, **overrides: Any) -> AppContext:
    settings = Settings(
        **{
            "backend_url": engine,
            "auth": "none",
            "allowed_models": [SMOL, GEMMA, GHOST],
            "max_message_chars": 300,
            "max_tokens_limit": 64,
            "context_tokens": 512,
            "rate_limit_per_minute": 1000,
            "share_secret": "turns-test-secret-0123456789abcdef0123",
            "connect_retry_window": 0.0,
            "cold_start_deadline": 3.0,
            **overrides,
        }
    )
    return AppContext.create(settings)


_sessions = itertools.count()


def request(host: str = "192.0.2.1") -> SimpleNamespace:
    """What the pipeline reads of a gr.Request: the session and the client's address."""
    return SimpleNamespace(
        session_hash=f"session-{next(_sessions)}", headers={}, client=SimpleNamespace(host=host)
    )


@pytest.fixture()
def ctx(engine: str) -> Iterator[AppContext]:
    yield make_ctx(engine)


async def turn_for(
    ctx: AppContext,
    text: str,
    models: list[str],
    *,
    max_tokens: int = 8,
    req: Any = None,
    scope: Scope = TEST_SCOPE,
    blind: bool = False,
) -> PreparedTurn:
    params = check_parameters(ctx, "", 0.0, 0.9, max_tokens)
    columns = [Column(m, [], label=f"Model {i}" if blind else None, blind=blind)
               for i, m in enumerate(models)]  # fmt: skip
    return prepare(ctx, text, params, columns, request=req or request(), scope=scope)


async def run(ctx: AppContext, turn: PreparedTurn) -> list[list[ColumnView]]:
    return [views async for views in stream_turn(ctx, turn)]


# === checks ================================================================================
def test_message_checks_name_the_problem(ctx: AppContext) -> None:
    assert check_message(ctx, "  \n ") is None
    assert check_message(ctx, None) is None
    assert check_message(ctx, "Hi") == "Hi"
    with pytest.raises(InputRejected, match="The message must be text, not int 42"):
        check_message(ctx, 42)
    with pytest.raises(InputRejected, match="301 characters long; the limit is 300"):
        check_message(ctx, "x" * 301)


def test_parameters_are_clamped_with_notices_or_rejected(ctx: AppContext) -> None:
    params = check_parameters(ctx, None, 3.5, 0.5, 100)
    assert params.system_prompt == ""
    assert params.options == {"temperature": 2.0, "top_p": 0.5, "num_predict": 64}
    assert params.notices == [
        "Temperature 3.5 is outside 0–2; used 2.",
        "Max tokens 100 is outside 1–64; used 64.",
    ]
    with pytest.raises(InputRejected, match="The system prompt must be text, not list"):
        check_parameters(ctx, ["x"], 0.7, 0.9, 8)
    with pytest.raises(InputRejected, match="Top-p must be a number, not str"):
        check_parameters(ctx, "", 0.7, "high", 8)


async def test_models_one_or_several(ctx: AppContext) -> None:
    assert await check_models(ctx, f" {SMOL} ", several=False) == [SMOL]
    assert await check_models(ctx, f"{SMOL},{GEMMA}", several=True) == [SMOL, GEMMA]
    with pytest.raises(ModelRejected, match="Pick a model first"):
        await check_models(ctx, None, several=False)
    with pytest.raises(InputRejected, match="Pick at least 2 models to compare"):
        await check_models(ctx, [SMOL], several=True)
    with pytest.raises(InputRejected, match="is picked twice"):
        await check_models(ctx, [SMOL, SMOL + " "], several=True)
    with pytest.raises(ModelRejected, match="not offered here"):
        await check_models(ctx, [SMOL, "llama9:7b"], several=True)


def test_histories_name_their_column_only_when_there_are_several() -> None:
    bad = [{"role": "wizard", "content": "boo"}]
    with pytest.raises(InputRejected, match=r"^Chat history entry 1 has role 'wizard'"):
        parse_histories([bad])
    with pytest.raises(InputRejected, match=r"^Column 2: Chat history entry 1"):
        parse_histories([[], bad])


def test_prepare_fits_each_column_and_says_what_was_left_out(ctx: AppContext) -> None:
    long_history = []
    for i in range(8):  # far over the 512-token context; each message within its limit
        long_history += [
            {"role": "user", "content": f"Question {i}: " + "tell me more " * 21},
            {"role": "assistant", "content": f"Answer {i}: " + "here is more " * 40},
        ]
    params = check_parameters(ctx, "Be brief.", 5.0, 0.9, 8)
    turn = prepare(
        ctx, "Summarize.", params, [Column(SMOL, long_history), Column(GEMMA, [])],
        request=request(), scope=TEST_SCOPE,
    )  # fmt: skip
    long, short = turn.columns
    assert long.display == [*long_history, {"role": "user", "content": "Summarize."}]
    assert long.messages[0] == {"role": "system", "content": "Be brief."}
    assert long.messages[-1] == {"role": "user", "content": "Summarize."}
    assert len(long.messages) < len(long_history)
    assert any("oldest messages were left out" in n for n in long.notices)
    # The clamped temperature is about the whole turn: every column's note repeats it.
    assert turn.notices == ["Temperature 5 is outside 0–2; used 2."]
    assert short.notices == turn.notices
    assert short.label == "Gemma 3 270M (base)"


def test_rate_limit_counts_per_client_and_scope(engine: str) -> None:
    ctx = make_ctx(engine, rate_limit_per_minute=1)
    params = check_parameters(ctx, "", 0.7, 0.9, 8)
    column = [Column(SMOL, [])]
    prepare(ctx, "Hi", params, column, request=request("192.0.2.7"), scope=CHAT)
    with pytest.raises(InputRejected, match="Too many messages: the limit is 1 per minute"):
        prepare(ctx, "Hi", params, column, request=request("192.0.2.7"), scope=CHAT)
    # Another client, and the same client on a page with its own count, are served.
    prepare(ctx, "Hi", params, column, request=request("192.0.2.8"), scope=CHAT)
    prepare(ctx, "Hi", params, column, request=request("192.0.2.7"), scope=COMPARE)


# === one reply and its timings =============================================================
class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_reply_timings_come_from_the_clock_and_warming_goes_with_the_first_token() -> None:
    clock = Clock()
    display = [{"role": "user", "content": "Hi"}]
    column = ColumnRequest(GEMMA, display, display, label="Model A", blind=False)
    reply = ReplyProgress(column, started=clock(), clock=clock)
    assert reply.view().phase == "waiting" and column_messages(reply.view()) == display
    assert reply.apply(WarmingStatus("loading", GEMMA, elapsed=1.0, typical=5.0))
    assert "Loading Gemma 3 270M (base) into GPU memory" in waiting_html(reply.view().waiting)
    clock.now = 102.5
    assert reply.apply(TokenDelta("Hel"))
    clock.now = 103.0
    assert reply.apply(TokenDelta("lo"))
    assert reply.view().waiting is None and reply.view().phase == "answering"
    stats = ReplyStats(eval_count=2, eval_duration=500_000_000, load_duration=1_200_000_000)
    assert not reply.apply(ReplyDone(stats))  # nothing new to show until it is finished
    clock.now = 104.0
    reply.finish()
    view = reply.view()
    assert view.phase == "done"
    assert view.figures is not None
    assert (view.figures.ttft_s, view.figures.total_s) == (2.5, 4.0)
    assert (view.figures.tokens_per_s, view.figures.load_s) == (4.0, 1.2)
    assert column_messages(view)[:-1] == [*display, {"role": "assistant", "content": "Hello"}]
    title = column_messages(view)[-1]["metadata"]["title"]
    assert title == "2.50 s to first token · 4.0 tokens/s · 4.00 s total · model load 1.20 s"
    assert "2 tokens generated by gemma3:270m" in column_messages(view)[-1]["content"]
    assert "model load 1.20 s" in column_status_html(view)


def test_a_finished_reply_carries_its_figures_as_data_bound_by_its_mac() -> None:
    clock = Clock()
    display = [{"role": "user", "content": "Hi"}]
    column = ColumnRequest(GEMMA, display, display, label="Gemma", blind=False)
    macs = ReplyMacs(b"turns-test-secret-0123456789abcdef")
    reply = ReplyProgress(column, started=clock(), clock=clock, macs=macs)
    reply.apply(TokenDelta("Hello"))
    reply.apply(ReplyDone(ReplyStats(eval_count=1, eval_duration=10**8, load_duration=10**5)))
    clock.now = 101.0
    reply.finish()
    view = reply.view()
    data = read_note_data(column_messages(view)[-1])
    assert data == NoteData(figures=view.figures, model=GEMMA, mac=view.mac)
    assert data.figures.total_s == 1.0 and data.figures.eval_count == 1
    assert macs.verify(ReplyClaim(GEMMA, "", "Hi", "Hello", data.figures), data.mac)
    slower = data.figures.model_copy(update={"total_s": 2.0})
    assert not macs.verify(ReplyClaim(GEMMA, "", "Hi", "Hello", slower), data.mac)


def test_a_blind_reply_hides_the_model_in_banners_errors_and_figures() -> None:
    clock = Clock()
    display = [{"role": "user", "content": "Hi"}]
    column = ColumnRequest(GEMMA, display, display, label="Model B", blind=True)
    reply = ReplyProgress(column, started=clock(), clock=clock)
    reply.apply(WarmingStatus("loading", GEMMA, elapsed=1.0, typical=5.0))
    assert "Loading Model B into GPU memory" in waiting_html(reply.view().waiting)
    assert "Gemma" not in waiting_html(reply.view().waiting)
    reply.apply(TokenDelta("Hi"))
    reply.apply(Failed("The model “gemma3:270m” is not available (Gemma 3 270M (base))."))
    reply.finish()
    view = reply.view()
    assert view.phase == "failed" and view.figures is None
    assert view.error == "The model “Model B” is not available (Model B)."
    assert "gemma" not in str(column_messages(view)).lower()
    assert "The reply above is incomplete." in column_messages(view)[-1]["content"]
    # Only the Chat has a retry button: only its error notes point at it.
    assert "retry" not in column_messages(view)[-1]["content"]


# === streaming from the real engine =======================================================
async def test_one_column_streams_a_timed_reply(ctx: AppContext) -> None:
    turn = await turn_for(ctx, "Name a colour.", [SMOL], max_tokens=6)
    updates = await run(ctx, turn)
    first, final = updates[0][0], updates[-1][0]
    assert column_messages(first) == [{"role": "user", "content": "Name a colour."}]
    assert first.phase == "waiting"
    assert final.phase == "done" and final.figures is not None
    assert final.figures.eval_count == 6
    assert final.figures.ttft_s is not None and final.figures.total_s is not None
    assert 0 < final.figures.ttft_s <= final.figures.total_s
    assert column_messages(final)[1]["role"] == "assistant" and column_messages(final)[1]["content"]
    assert " s total" in column_messages(final)[-1]["metadata"]["title"]
    # The reply grows through the updates; each one is new (no update without a change).
    shown = [column_messages(u[0]) for u in updates[1:-1]]
    texts = [messages[1]["content"] for messages in shown if len(messages) > 1]
    assert texts == sorted(texts, key=len)


async def test_columns_stream_concurrently_and_a_failing_one_ends_alone(
    ctx: AppContext,
) -> None:
    turn = await turn_for(ctx, "Say hi.", [SMOL, GHOST, GEMMA], max_tokens=4)
    final = (await run(ctx, turn))[-1]
    smol, ghost, gemma = final
    assert smol.phase == "done" and gemma.phase == "done"
    assert ghost.phase == "failed" and ghost.error is not None and GHOST in ghost.error
    assert column_messages(ghost)[-1]["metadata"]["title"].startswith(WARNING_SIGN)
    assert "compare-status-error" in column_status_html(ghost)


async def test_blind_columns_show_no_figures(ctx: AppContext) -> None:
    turn = await turn_for(ctx, "Say hi.", [SMOL, GEMMA], max_tokens=3, blind=True)
    final = (await run(ctx, turn))[-1]
    for view in final:
        assert view.phase == "done" and view.figures is None
        assert "tokens/s" not in str(column_messages(view))
        assert "Done" in column_status_html(view)


async def test_stop_ends_every_column_of_the_session_only(ctx: AppContext) -> None:
    req = request()
    turn = await turn_for(ctx, "Count to one hundred.", [SMOL, GEMMA], max_tokens=64, req=req)
    other = await turn_for(ctx, "Count to one hundred.", [SMOL], max_tokens=12)
    stopped_at: list[int] = []

    async def watch() -> list[list[ColumnView]]:
        updates = []
        async for views in stream_turn(ctx, turn):
            updates.append(views)
            if not stopped_at and any(v.phase == "answering" for v in views):
                assert turn_running(ctx, req, TEST_SCOPE)
                assert stop_turn(ctx, req, TEST_SCOPE)
                stopped_at.append(len(updates))
        return updates

    updates, other_updates = await asyncio.gather(watch(), run(ctx, other))
    assert [v.phase for v in updates[-1]] == ["stopped", "stopped"]
    for view in updates[-1]:
        assert column_messages(view)[-1]["metadata"]["title"].startswith("Stopped")
    assert not turn_running(ctx, req, TEST_SCOPE), "the stop signal is released"
    assert not stop_turn(ctx, req, TEST_SCOPE)
    assert other_updates[-1][0].phase == "done", "another session's turn went on"
    assert other_updates[-1][0].figures.eval_count == 12  # type: ignore[union-attr]
