"""The local engine through the official `ollama` Python client (sync and async)."""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import time

import httpx
import ollama
import pytest

from catalog import local_models
from devtools.testkit.procs import start_engine

SMOL = "smollm2:135m"
GEMMA = "gemma3:270m"
HELLO = [{"role": "user", "content": "Say hello."}]
COUNT = [{"role": "user", "content": "Count from 1 to 100."}]


@pytest.fixture(scope="module")
def client(engine: str) -> ollama.Client:
    return ollama.Client(host=engine, timeout=httpx.Timeout(120.0, connect=5.0))


def test_root_and_version(engine: str) -> None:
    assert httpx.get(engine + "/", timeout=5).text == "Ollama is running"
    assert httpx.get(engine + "/api/version", timeout=5).json()["version"]


def test_list_shows_bundled_models(client: ollama.Client) -> None:
    listed = {m.model: m for m in client.list().models}
    assert set(listed) == {m.tag for m in local_models()}
    assert listed[GEMMA].details.family == "gemma3"  # as Ollama reports gemma3:270m
    assert listed[SMOL].details.family == "llama"
    assert all(m.size and m.size > 10_000_000 for m in listed.values())


def test_show_says_gemma_is_a_base_model(client: ollama.Client) -> None:
    shown = client.show(GEMMA)
    assert "not chat-tuned" in (shown.modelfile or "")
    assert "<start_of_turn>" in (shown.template or "")
    assert shown.details.parameter_size == "270M"
    assert "chat-tuned" in client.show(SMOL).modelfile and "not" not in client.show(SMOL).modelfile


@pytest.mark.parametrize("model", [SMOL, GEMMA])
def test_both_models_chat_non_empty(client: ollama.Client, model: str) -> None:
    resp = client.chat(model=model, messages=HELLO, options={"num_predict": 16, "seed": 1})
    assert resp.message.role == "assistant"
    assert resp.message.content.strip()
    assert resp.done and resp.eval_count and resp.eval_count <= 16
    assert resp.prompt_eval_count and resp.prompt_eval_count > 3
    assert resp.eval_duration and resp.eval_duration > 0
    assert resp.total_duration and resp.total_duration >= resp.eval_duration


def test_chat_streams_chunks_with_final_stats(client: ollama.Client) -> None:
    """Greedy decoding of a count to 100 never ends by itself within 12 tokens, so the
    final chunk must say so exactly: stopped at the limit, 12 tokens generated."""
    chunks = list(
        client.chat(
            model=SMOL, messages=COUNT, stream=True, options={"num_predict": 12, "temperature": 0}
        )
    )
    assert len(chunks) >= 3
    assert all(not c.done for c in chunks[:-1])
    last = chunks[-1]
    assert last.done and (last.done_reason, last.eval_count) == ("length", 12)
    assert last.prompt_eval_count and last.prompt_eval_count > 3
    assert last.eval_duration and last.total_duration and last.total_duration > last.eval_duration
    # At most one text chunk per generated token (a token may show no text yet: part of a
    # UTF-8 character or of a possible stop string), plus one last flush of held text.
    pieces = [c for c in chunks[:-1] if c.message.content]
    assert 3 <= len(pieces) <= last.eval_count + 1
    text = "".join(c.message.content for c in chunks)
    assert text.strip()


def test_generate_streamed_and_not(client: ollama.Client) -> None:
    full = client.generate(model=GEMMA, prompt="Once upon a time", options={"num_predict": 8})
    assert full.response and full.done and full.context
    parts = list(
        client.generate(
            model=GEMMA, prompt="Once upon a time", stream=True, options={"num_predict": 8}
        )
    )
    assert parts[-1].done and "".join(p.response for p in parts).strip()


def test_num_predict_caps_eval_count(client: ollama.Client) -> None:
    for n in (1, 5):
        resp = client.chat(
            model=SMOL,
            messages=COUNT,
            options={"num_predict": n, "temperature": 0},  # greedy: never done in 5 tokens
        )
        assert resp.eval_count == n
        assert resp.done_reason == "length"


def test_same_seed_and_zero_temperature_is_deterministic(client: ollama.Client) -> None:
    opts = {"seed": 42, "temperature": 0, "num_predict": 20}
    msgs = [{"role": "user", "content": "Name three colors."}]
    a = client.chat(model=SMOL, messages=msgs, options=opts).message.content
    b = client.chat(model=SMOL, messages=msgs, options=opts).message.content
    assert a == b and a.strip()


def test_a_slot_reused_with_a_shared_prefix_gives_the_same_reply(client: ollama.Client) -> None:
    """The engine keeps what a slot holds of the previous prompt when the next one starts
    the same way, and evaluates the rest in chunks (backend.engine._prefill): replies must
    not depend on what the slot held before. A long system prompt spans several chunks."""
    opts = {"seed": 7, "temperature": 0, "num_predict": 16, "num_ctx": 1536}  # own slot size
    system = {"role": "system", "content": "You answer briefly. " + "Be kind and clear. " * 40}
    first = [system, {"role": "user", "content": "Name three colors."}]
    a = client.chat(model=SMOL, messages=first, options=opts).message.content
    longer = [*first, {"role": "assistant", "content": a}, {"role": "user", "content": "Animals?"}]
    b = client.chat(model=SMOL, messages=longer, options=opts).message.content
    other = [system, {"role": "user", "content": "Name three fruits."}]
    c = client.chat(model=SMOL, messages=other, options=opts).message.content
    # Again, each after a different predecessor in the slot.
    assert client.chat(model=SMOL, messages=longer, options=opts).message.content == b
    assert client.chat(model=SMOL, messages=first, options=opts).message.content == a
    assert client.chat(model=SMOL, messages=other, options=opts).message.content == c
    assert a.strip() and b.strip() and c.strip() and len({a, b, c}) == 3


def test_seed_changes_sampled_text(client: ollama.Client) -> None:
    msgs = [{"role": "user", "content": "Tell me a random word."}]
    outs = {
        client.chat(
            model=SMOL, messages=msgs, options={"seed": s, "temperature": 1.5, "num_predict": 12}
        ).message.content
        for s in range(4)
    }
    assert len(outs) > 1


def test_stop_option_ends_generation(client: ollama.Client) -> None:
    msgs = [{"role": "user", "content": "Count from 1 to 20."}]
    opts = {"temperature": 0, "num_predict": 40}
    plain = client.chat(model=SMOL, messages=msgs, options=opts).message.content
    stop = plain[len(plain) // 2 : len(plain) // 2 + 2]  # a string from the middle of the answer
    assert len(stop) == 2
    cut = client.chat(model=SMOL, messages=msgs, options={**opts, "stop": [stop]})
    assert cut.message.content == plain[: plain.find(stop)]
    assert cut.done_reason == "stop"


def test_load_and_unload_with_keep_alive(client: ollama.Client) -> None:
    client.chat(model=GEMMA, messages=[], keep_alive=0)  # unload
    assert GEMMA not in {m.model for m in client.ps().models}
    loaded = client.chat(model=GEMMA, messages=[], keep_alive="10m")
    assert loaded.done and loaded.done_reason == "load"
    assert GEMMA in {m.model for m in client.ps().models}
    client.generate(model=GEMMA, prompt="", keep_alive=0)
    assert GEMMA not in {m.model for m in client.ps().models}


def test_short_keep_alive_expires(client: ollama.Client) -> None:
    client.chat(model=GEMMA, messages=HELLO, options={"num_predict": 2}, keep_alive="1s")
    assert GEMMA in {m.model for m in client.ps().models}
    deadline = time.monotonic() + 10
    while GEMMA in {m.model for m in client.ps().models}:
        assert time.monotonic() < deadline, "model stayed loaded past its keep_alive"
        time.sleep(0.3)


def test_load_duration_reported_when_loading(client: ollama.Client) -> None:
    client.chat(model=GEMMA, messages=[], keep_alive=0)
    cold = client.chat(model=GEMMA, messages=HELLO, options={"num_predict": 2})
    warm = client.chat(model=GEMMA, messages=HELLO, options={"num_predict": 2})
    assert cold.load_duration and cold.load_duration > 1_000_000  # > 1 ms: a real load
    # Never 0, as in Ollama (tests/test_engine_ollama.py): the scheduling time only.
    assert warm.load_duration and 0 < warm.load_duration < cold.load_duration


def test_unknown_model_is_404(client: ollama.Client) -> None:
    with pytest.raises(ollama.ResponseError) as err:
        client.chat(model="no-such-model:1b", messages=HELLO)
    assert err.value.status_code == 404
    assert "no-such-model:1b" in err.value.error and "not found" in err.value.error


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        (
            {"model": SMOL, "messages": HELLO, "options": {"temperature": "hot"}},
            "options.temperature",
        ),
        ({"model": SMOL, "messages": "hello"}, "messages"),
        ({"model": SMOL, "messages": HELLO, "stream": "yes"}, "stream"),
        ({"messages": HELLO}, "model is required"),
        ({"model": SMOL, "messages": [{"role": "wizard", "content": "x"}]}, "role"),
        ({"model": SMOL, "messages": HELLO, "keep_alive": "soon"}, "keep_alive"),
    ],
)
def test_bad_fields_are_400_naming_the_field(engine: str, body: dict, needle: str) -> None:
    resp = httpx.post(engine + "/api/chat", json=body, timeout=30)
    assert resp.status_code == 400
    assert needle in resp.json()["error"]


def test_malformed_json_is_400(engine: str) -> None:
    resp = httpx.post(engine + "/api/chat", content=b"{not json", timeout=10)
    assert resp.status_code == 400 and "JSON" in resp.json()["error"]


def test_client_maps_400_to_response_error(client: ollama.Client) -> None:
    with pytest.raises(ollama.ResponseError) as err:
        client.chat(model=SMOL, messages=HELLO, options={"top_p": 7})
    assert err.value.status_code == 400 and "top_p" in err.value.error


@pytest.mark.parametrize("endpoint", ["pull", "push", "create", "delete", "copy"])
def test_management_endpoints_refused_clearly(engine: str, endpoint: str) -> None:
    resp = httpx.post(f"{engine}/api/{endpoint}", json={"model": "x"}, timeout=10)
    assert resp.status_code >= 400
    assert "only serves its bundled models" in resp.json()["error"]


async def test_async_client_streams_and_maps_errors(engine: str) -> None:
    aclient = ollama.AsyncClient(host=engine, timeout=httpx.Timeout(120.0, connect=5.0))
    parts = [
        p
        async for p in await aclient.chat(
            model=SMOL, messages=HELLO, stream=True, options={"num_predict": 8}
        )
    ]
    assert parts[-1].done and "".join(p.message.content for p in parts).strip()
    assert {m.model for m in (await aclient.list()).models} >= {SMOL, GEMMA}
    with pytest.raises(ollama.ResponseError) as err:
        await aclient.chat(model="missing", messages=HELLO)
    assert err.value.status_code == 404


async def test_parallel_streams_complete_without_mixing(engine: str) -> None:
    """8 parallel streamed chats each equal the same request run alone (greedy decoding)."""
    aclient = ollama.AsyncClient(host=engine, timeout=httpx.Timeout(300.0, connect=5.0))
    topics = ["cats", "the sea", "bread", "rain", "music", "trains", "winter", "bees"]
    opts = {"temperature": 0, "seed": 7, "num_predict": 24}

    async def one(topic: str) -> tuple[str, list[float]]:
        times, text = [], ""
        msgs = [{"role": "user", "content": f"Write one sentence about {topic}."}]
        async for part in await aclient.chat(model=SMOL, messages=msgs, stream=True, options=opts):
            times.append(time.monotonic())
            text += part.message.content
        return text, times

    alone = {t: (await one(t))[0] for t in topics}
    for _round in range(2):  # the first round also creates the extra llama.cpp contexts
        results = await asyncio.gather(*(one(t) for t in topics))
        for topic, (text, _) in zip(topics, results, strict=True):
            assert text == alone[topic], f"parallel output for {topic!r} differs from solo run"
    # They really ran at the same time: streams started before the first one finished
    # (serialized, only one would). One may lag on a busy machine: llama.cpp's two-thread
    # pool of the stream that started alone stalls when the cores are oversubscribed.
    first_finish = min(times[-1] for _, times in results)
    started_early = sum(times[0] < first_finish for _, times in results)
    assert started_early >= len(topics) - 1


async def test_disconnect_mid_stream_frees_the_slot(engine: str) -> None:
    """Clients that go away stop their generations: their slots serve the next requests."""
    endless = {
        "model": SMOL,
        "messages": [{"role": "user", "content": "Write a long story."}],
        "options": {"num_predict": 100000, "temperature": 1},
    }
    count = [{"role": "user", "content": "Count from 1 to 100."}]  # never done in 4 tokens
    short = {
        "model": SMOL,
        "messages": count,
        "stream": False,
        "options": {"num_predict": 4, "temperature": 0},
    }
    timeout = httpx.Timeout(60.0, connect=5.0)
    async with httpx.AsyncClient(base_url=engine, timeout=timeout) as client:
        # Occupy all 10 slots with generations that would run for minutes, then drop them.
        async with contextlib.AsyncExitStack() as stack:
            for _ in range(10):
                resp = await stack.enter_async_context(
                    client.stream("POST", "/api/chat", json=endless)
                )
                lines = resp.aiter_lines()
                await lines.__anext__()  # generating
                stack.push_async_callback(lines.aclose)
        # Ten new requests only get slots if the dropped generations really stopped.
        results = await asyncio.wait_for(
            asyncio.gather(*(client.post("/api/chat", json=short) for _ in range(10))),
            timeout=45,
        )
    assert [r.status_code for r in results] == [200] * 10
    assert all(r.json()["eval_count"] == 4 for r in results)


def test_the_log_keeps_every_line_while_models_load_at_the_same_time() -> None:
    """llama-cpp-python silences a load by pointing fds 1 and 2 at /dev/null and back; two
    loads at once (a Battle's two models) left the engine's log, its stderr, on /dev/null
    for good, and lines logged meanwhile were lost."""
    proc, url = start_engine(None, name="engine-log-lines")
    try:
        for _ in range(3):
            with httpx.Client(base_url=url, timeout=60.0) as http:
                for model in (SMOL, GEMMA):  # unloaded: the next requests load them again
                    http.post("/api/chat", json={"model": model, "messages": [], "keep_alive": 0})

            async def load_both(base: str = url) -> None:
                async with httpx.AsyncClient(base_url=base, timeout=60.0) as client:
                    loads = [
                        client.post("/api/chat", json={"model": m, "messages": []})
                        for m in (SMOL, GEMMA)
                    ]
                    assert [r.status_code for r in await asyncio.gather(*loads)] == [200, 200]

            asyncio.run(load_both())
        log = proc.log()
    finally:
        proc.stop()
    assert log.count(f"loaded {SMOL} in") == 3, log
    assert log.count(f"loaded {GEMMA} in") == 3, log
    # llama.cpp writes to fd 2 itself when it builds a Gemma context: still the log file.
    assert log.count("llama_kv_cache_iswa: using full-size SWA cache") == 3, log


def test_an_idle_connection_outlives_the_clients_keep_alive(engine: str) -> None:
    """A connection left idle longer than the UI's keep-alive (httpx: 5 s) still answers on
    the engine, as on Ollama, whose server closes no idle connection (server/routes.go,
    Serve: an http.Server without IdleTimeout). With uvicorn's 5 s default the engine closed
    it in the same instant the UI reused it, and a chat broke off without an answer."""
    # http.client reuses its open connection and opens no new one: a connection the engine
    # closed makes the second answer fail (RemoteDisconnected).
    conn = http.client.HTTPConnection(engine.removeprefix("http://"), timeout=10)
    try:
        for round_ in range(2):
            if round_:
                time.sleep(6)  # past the client's keep-alive expiry
            conn.request("GET", "/api/version")
            answer = conn.getresponse()
            assert answer.status == 200, round_
            assert "version" in json.loads(answer.read())
    finally:
        conn.close()
