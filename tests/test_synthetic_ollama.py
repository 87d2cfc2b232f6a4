"""The benchmarks' synthetic backend (bench/synthetic_ollama.py), read by the official
`ollama` client: the same wire schema, and tokens paced at the configured rate."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import httpx
import ollama
import pytest
import uvicorn

from bench.synthetic_ollama import MODEL, TOKEN_TEXT, SyntheticConfig, SyntheticOllama

RATE = 100.0  # tokens/s
FIRST_TOKEN_DELAY = 0.05


@pytest.fixture
async def synthetic() -> AsyncIterator[str]:
    app = SyntheticOllama(SyntheticConfig(rate=RATE, first_token_delay=FIRST_TOKEN_DELAY)).app()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="off")
    )
    task = asyncio.create_task(server.serve())
    while not server.started:
        assert not task.done(), "the synthetic backend did not start"
        await asyncio.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task


async def test_a_stream_is_paced_and_parsed_by_the_ollama_client(synthetic: str) -> None:
    client = ollama.AsyncClient(host=synthetic)
    tokens = 20
    started = time.perf_counter()
    arrivals: list[float] = []
    chunks: list[ollama.ChatResponse] = []
    stream = await client.chat(
        model=MODEL,
        messages=[{"role": "user", "content": "Hi"}],
        options={"num_predict": tokens},
        stream=True,
    )
    async for chunk in stream:
        arrivals.append(time.perf_counter() - started)
        chunks.append(chunk)
    *token_chunks, final = chunks
    assert [c.message.content for c in token_chunks] == [TOKEN_TEXT] * tokens
    assert not any(c.done for c in token_chunks)
    assert final.done and final.done_reason == "length" and final.eval_count == tokens
    assert final.message.content == ""
    assert final.eval_duration == pytest.approx(tokens / RATE * 1e9, rel=0.01)
    # The schedule is a floor the server never beats (a busy machine only adds to it):
    # the first token after the delay, token i at delay + i / rate.
    assert arrivals[0] >= FIRST_TOKEN_DELAY
    assert arrivals[tokens - 1] >= FIRST_TOKEN_DELAY + (tokens - 1) / RATE
    async with httpx.AsyncClient(base_url=synthetic) as http:
        stats = (await http.get("/_synthetic/stats")).json()
    assert (stats["streams"], stats["tokens"], stats["active"]) == (1, tokens, 0)


async def test_the_other_endpoints_speak_the_ollama_schema(synthetic: str) -> None:
    client = ollama.AsyncClient(host=synthetic)
    assert [m.model for m in (await client.list()).models] == [MODEL]
    loaded = (await client.ps()).models
    assert [(m.model, m.name) for m in loaded] == [(MODEL, MODEL)]
    answer = await client.chat(
        model=MODEL, messages=[{"role": "user", "content": "Hi"}], options={"num_predict": 3}
    )
    assert answer.message.content == TOKEN_TEXT * 3 and answer.done_reason == "length"
    load = await client.chat(model=MODEL, messages=[])
    assert load.done_reason == "load" and load.eval_count == 0
    with pytest.raises(ollama.ResponseError) as missing:
        await client.chat(model="nope:1b", messages=[{"role": "user", "content": "Hi"}])
    assert missing.value.status_code == 404 and "not found" in missing.value.error
    async with httpx.AsyncClient(base_url=synthetic) as http:
        assert (await http.get("/")).text == "Ollama is running"
        assert (await http.get("/api/version")).json() == {"version": "0.0.0-synthetic"}
        bad = await http.post("/api/chat", content=b'{"model": 5}')
        assert bad.status_code == 400 and "error" in bad.json()


async def test_a_client_leaving_mid_stream_ends_it(synthetic: str) -> None:
    client = ollama.AsyncClient(host=synthetic)
    stream = await client.chat(
        model=MODEL,
        messages=[{"role": "user", "content": "Hi"}],
        options={"num_predict": 10_000},  # 100 s at RATE: only a hang-up ends it early
        stream=True,
    )
    async for _ in stream:
        break
    await stream.aclose()  # type: ignore[attr-defined]
    async with httpx.AsyncClient(base_url=synthetic) as http:
        for _ in range(500):
            stats = (await http.get("/_synthetic/stats")).json()
            if stats["active"] == 0:
                break
            await asyncio.sleep(0.01)
    assert stats["active"] == 0 and stats["tokens"] < 10_000, stats
