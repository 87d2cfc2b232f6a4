"""The local engine behaves as the pinned Ollama release does (issue 16).

The GPU image pins Ollama 0.24.0 (Dockerfile.llm; the newest release whose CUDA build runs on
Cloud Run's L4 driver 535, see /work/notes/ollama_pin.md). Each test states one Ollama
behaviour and cites where Ollama's source (github.com/ollama/ollama at tag v0.24.0) has it, so
a change of the pin shows which tests to revisit.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from collections.abc import Iterator

import httpx
import ollama
import pytest
from llama_cpp import Llama

import catalog
from backend import model_files, prompts
from backend.engine import FOREVER, parse_env_keep_alive, parse_keep_alive
from devtools.testkit.procs import Proc, start_engine

GEMMA = "gemma3:270m"
SMOL = "smollm2:135m"
HELLO = [{"role": "user", "content": "Say hello"}]
TWO = {"num_predict": 2, "temperature": 0}


@pytest.fixture(scope="module")
def client(engine: str) -> ollama.Client:
    return ollama.Client(host=engine, timeout=httpx.Timeout(120.0, connect=5.0))


@pytest.fixture(scope="module")
def waiting_engine() -> Iterator[str]:
    """An engine whose /api/ps waits for loads (as Ollama 0.32.4+), with one slot per model,
    a queue of one, OLLAMA_KEEP_ALIVE=-1 as the GPU image sets it, and the image's context."""
    proc: Proc
    proc, url = start_engine(
        None,
        "--ps-while-loading",
        "wait",
        "--num-parallel",
        "1",
        "--max-queue",
        "1",
        "--keep-alive",
        "-1",
        name="engine-wait",
    )
    try:
        yield url
    finally:
        proc.stop()


def _expires(client: ollama.Client, model: str) -> dt.datetime:
    entry = next(m for m in client.ps().models if m.model == model)
    assert entry.expires_at is not None
    return entry.expires_at


def _left(expires: dt.datetime) -> float:
    return (expires - dt.datetime.now(dt.UTC)).total_seconds()


# --- 2. keep_alive -------------------------------------------------------------------------
def test_keep_alive_sticks_and_an_omitted_one_leaves_it(client: ollama.Client) -> None:
    # server/sched.go useLoadedRunner (v0.24.0): `if pending.sessionDuration != nil {
    # runner.sessionDuration = ...}`: a request's keep_alive stays on the loaded model; a
    # request without one leaves it unchanged (processCompleted then sets expiresAt from it).
    client.chat(model=SMOL, messages=HELLO, options=TWO, keep_alive="1h")
    assert 3500 < _left(_expires(client, SMOL)) <= 3600
    client.chat(model=SMOL, messages=HELLO, options=TWO)  # no keep_alive
    assert 3500 < _left(_expires(client, SMOL)) <= 3600, "an omitted keep_alive reset it"
    client.chat(model=SMOL, messages=HELLO, options=TWO, keep_alive="5m")  # the default again
    assert 250 < _left(_expires(client, SMOL)) <= 300


def test_negative_keep_alive_is_forever(client: ollama.Client) -> None:
    # api/types.go Duration.UnmarshalJSON (v0.24.0): a negative number or duration becomes
    # time.Duration(math.MaxInt64), ~292 years: /api/ps shows an expiry in the 2300s.
    for forever in (-1, "-1m"):
        client.chat(model=SMOL, messages=[], keep_alive=forever)
        assert _expires(client, SMOL).year >= 2318
    client.chat(model=SMOL, messages=[], keep_alive="5m")
    assert _left(_expires(client, SMOL)) <= 300


@pytest.mark.parametrize("value", ["-1", "300", "soon", "5 m"])
def test_keep_alive_string_needs_a_unit(engine: str, value: str) -> None:
    # api/types.go Duration.UnmarshalJSON (v0.24.0): a string goes to time.ParseDuration,
    # which refuses a number without a unit ("time: missing unit in duration"): HTTP 400.
    resp = httpx.post(
        engine + "/api/chat",
        json={"model": SMOL, "messages": HELLO, "keep_alive": value},
        timeout=30,
    )
    assert resp.status_code == 400
    assert "keep_alive" in resp.json()["error"] and "time: " in resp.json()["error"]


def test_keep_alive_values_read_as_ollama_reads_them() -> None:
    # api/types.go Duration.UnmarshalJSON and envconfig KeepAlive (v0.24.0).
    assert parse_keep_alive(300) == 300.0  # a JSON number is seconds
    assert parse_keep_alive("1h30m") == 5400.0
    assert parse_keep_alive("0") == 0.0  # Go accepts a bare 0
    assert parse_keep_alive(-5) == FOREVER
    with pytest.raises(ValueError, match="missing unit"):
        parse_keep_alive("-1")
    with pytest.raises(ValueError, match="Unsupported type"):
        parse_keep_alive(True)
    # OLLAMA_KEEP_ALIVE: a duration, else whole seconds; negative = forever.
    assert parse_env_keep_alive("-1") == FOREVER
    assert parse_env_keep_alive("300") == 300.0
    assert parse_env_keep_alive("5m") == 300.0


def test_env_keep_alive_minus_one_keeps_models_forever(waiting_engine: str) -> None:
    # envconfig KeepAlive (v0.24.0): OLLAMA_KEEP_ALIVE=-1 (the GPU image's setting) parses
    # as -1 s and becomes MaxInt64: a model loaded without keep_alive never expires.
    client = ollama.Client(host=waiting_engine, timeout=120)
    client.chat(model=SMOL, messages=HELLO, options=TWO)
    assert _expires(client, SMOL).year >= 2318


# --- 3. failures before the first token are HTTP statuses ---------------------------------
def test_too_long_input_without_truncation_is_a_400_before_any_chunk(engine: str) -> None:
    # runner/ollamarunner/runner.go NewSequence (v0.24.0): truncate=false and more input
    # than the context -> errorInputTooLong, answered 400; server/routes.go streamResponse
    # writes it as the status because nothing was written yet.
    body = {
        "model": SMOL,
        "messages": [{"role": "user", "content": "word " * 300}],
        "truncate": False,
        "options": {"num_ctx": 128},
    }
    with httpx.stream("POST", engine + "/api/chat", json=body, timeout=60) as resp:
        assert resp.status_code == 400
        assert resp.headers["content-type"].startswith("application/json")
        assert resp.read() == b'{"error":"the input length exceeds the context length"}'


def test_streamed_reply_headers_wait_for_the_first_token(engine: str) -> None:
    # server/routes.go streamResponse (v0.24.0): the status and headers go out with the
    # first chunk; before it, the status can still become an error.
    body = {"model": SMOL, "messages": HELLO, "options": {"num_predict": 3}}
    with httpx.stream("POST", engine + "/api/chat", json=body, timeout=60) as resp:
        assert resp.status_code == 200
        first = next(resp.iter_lines())
    assert '"done":false' in first and '"content":' in first


def test_queue_full_is_a_503_status(waiting_engine: str) -> None:
    # server/sched.go GetRunner (v0.24.0): a request for a model that is not loaded goes to
    # pendingReqCh (OLLAMA_MAX_QUEUE slots), else ErrMaxQueue; routes.go answers it 503.
    async def three() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=waiting_engine, timeout=120) as c:
            await c.post("/api/chat", json={"model": GEMMA, "messages": [], "keep_alive": 0})
            body = {"model": GEMMA, "messages": HELLO, "stream": True, "options": TWO}
            return list(await asyncio.gather(*(c.post("/api/chat", json=body) for _ in range(3))))

    results = asyncio.run(three())
    assert sorted(r.status_code for r in results) == [200, 200, 503]
    busy = next(r for r in results if r.status_code == 503)
    assert busy.json() == {
        "error": "server busy, please try again.  maximum pending requests exceeded"
    }


# --- 6. concurrency ---------------------------------------------------------------------------
def test_num_parallel_waits_without_limit_and_never_503(waiting_engine: str) -> None:
    # llm/server.go Completion (v0.24.0): `s.sem.Acquire(ctx, 1)`, a semaphore of
    # OLLAMA_NUM_PARALLEL per runner with no bound on waiters; a loaded model's requests
    # never enter the pending queue (GetRunner -> useLoadedRunner).
    async def many() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=waiting_engine, timeout=300) as c:
            await c.post("/api/chat", json={"model": SMOL, "messages": []})  # loaded
            body = {"model": SMOL, "messages": HELLO, "stream": False, "options": TWO}
            return list(await asyncio.gather(*(c.post("/api/chat", json=body) for _ in range(6))))

    results = asyncio.run(many())  # one slot, a queue of one, six at once
    assert [r.status_code for r in results] == [200] * 6


def test_default_context_is_4096(client: ollama.Client) -> None:
    # server/routes.go Serve (v0.24.0): without OLLAMA_CONTEXT_LENGTH, under 23 GiB of VRAM
    # (a CPU has none) the default num_ctx is 4096 - the GPU image's OLLAMA_CONTEXT_LENGTH too.
    client.chat(model=SMOL, messages=HELLO, options=TWO)
    entry = next(m for m in client.ps().models if m.model == SMOL)
    assert entry.context_length == 4096


# --- 5. load_duration ---------------------------------------------------------------------
def test_load_duration_spans_request_start_to_model_ready(engine: str) -> None:
    # server/routes.go ChatHandler (v0.24.0): load_duration = checkpointLoaded -
    # checkpointStart, from handler entry to scheduleRunner's return: never 0, a few ms when
    # loaded, the whole load (and any wait behind another request's load) otherwise.
    async def run() -> tuple[list[int], int]:
        async with httpx.AsyncClient(base_url=engine, timeout=120) as c:
            await c.post("/api/chat", json={"model": GEMMA, "messages": [], "keep_alive": 0})
            body = {"model": GEMMA, "messages": HELLO, "stream": False, "options": TWO}
            cold = await asyncio.gather(*(c.post("/api/chat", json=body) for _ in range(2)))
            warm = await c.post("/api/chat", json=body)
            return [r.json()["load_duration"] for r in cold], warm.json()["load_duration"]

    cold, warm = asyncio.run(run())
    assert all(ns > 100_000_000 for ns in cold), cold  # both waited for the one load
    assert 0 < warm < 50_000_000, warm


# --- 1. /api/ps while a model loads ------------------------------------------------------------
def _load_in_background(url: str, model: str) -> asyncio.Task[httpx.Response]:
    client = httpx.AsyncClient(base_url=url, timeout=120)
    body = {"model": model, "messages": HELLO, "stream": False, "options": TWO}

    async def run() -> httpx.Response:
        async with client:
            return await client.post("/api/chat", json=body)

    return asyncio.ensure_future(run())


def test_ps_lists_a_loading_model_as_0_24_does(engine: str) -> None:
    # server/sched.go load() (v0.24.0) puts the runner into s.loaded before WaitUntilRunning;
    # routes.go PsHandler lists s.sched.loaded, with expires_at = now + keep_alive while the
    # scheduler has not set it ("if v.expiresAt == epoch").
    async def run() -> list[dict]:
        async with httpx.AsyncClient(base_url=engine, timeout=60) as c:
            await c.post("/api/chat", json={"model": GEMMA, "messages": [], "keep_alive": 0})
            task = _load_in_background(engine, GEMMA)
            seen: list[dict] = []
            while not task.done():
                models = (await c.get("/api/ps")).json()["models"]
                seen += [m for m in models if m["model"] == GEMMA]
                await asyncio.sleep(0.02)
            assert (await task).status_code == 200
            return seen

    seen = asyncio.run(run())
    assert seen, "the loading model never appeared in /api/ps"
    first = seen[0]
    assert first["size_vram"] == 0 and first["context_length"] == 4096
    left = (dt.datetime.fromisoformat(first["expires_at"]) - dt.datetime.now(dt.UTC)).seconds
    assert 250 < left <= 300  # now + the default keep_alive, recomputed on each call


def test_ps_waits_for_a_load_as_0_32_does(waiting_engine: str) -> None:
    # server/sched.go loadedModels (v0.32.4+, PR #17376) takes each runner's refMu, which a
    # loading runner holds until it runs: /api/ps answers only once the load is done.
    async def run() -> tuple[float, float, list[str]]:
        async with httpx.AsyncClient(base_url=waiting_engine, timeout=60) as c:
            await c.post("/api/chat", json={"model": GEMMA, "messages": [], "keep_alive": 0})
            task = _load_in_background(waiting_engine, GEMMA)
            await asyncio.sleep(0.05)
            t0 = time.monotonic()
            models = (await c.get("/api/ps")).json()["models"]
            ps_took = time.monotonic() - t0
            load_ns = (await task).json()["load_duration"]
            return ps_took, load_ns / 1e9, [m["model"] for m in models]

    ps_took, load_s, listed = asyncio.run(run())
    assert GEMMA in listed
    assert ps_took > 0.5 * (load_s - 0.05), (ps_took, load_s)


# --- 4. prompts ---------------------------------------------------------------------------------
# The template of ollama.com/library/gemma3:270m, blob 4b19ac7dd2fb, as Ollama serves it.
LIBRARY_GEMMA3_270M = """{{- $systemPromptAdded := false }}
{{- range $i, $_ := .Messages }}
{{- $last := eq (len (slice $.Messages $i)) 1 }}
{{- if eq .Role "user" }}<start_of_turn>user
{{- if (and (not $systemPromptAdded) $.System) }}
{{- $systemPromptAdded = true }}
{{ $.System }}
{{ end }}
{{ .Content }}<end_of_turn>
{{ if $last }}<start_of_turn>model
{{ end }}
{{- else if eq .Role "assistant" }}<start_of_turn>model
{{ .Content }}{{ if not $last }}<end_of_turn>
{{ end }}
{{- end }}
{{- end }}"""


def test_show_gives_the_library_template(client: ollama.Client) -> None:
    assert client.show(GEMMA).template == LIBRARY_GEMMA3_270M


def _text(messages: list[prompts.Message]) -> str:
    return "".join(s.text for s in prompts.render("gemma", messages))


def test_gemma_prompt_is_the_library_template_executed() -> None:
    # template/template.go Execute + collate (v0.24.0): consecutive same-role messages merge
    # with a blank line; .System is every system message joined; the gemma3:270m template
    # puts it into the first user turn; a last assistant message is left open.
    M = prompts.Message
    assert _text([M("system", "S1"), M("user", "a"), M("user", "b"), M("system", "S2")]) == (
        "<start_of_turn>user\nS1\n\nS2\n\na\n\nb<end_of_turn>\n"
    )
    assert _text([M("user", "q"), M("assistant", "x"), M("user", "r")]) == (
        "<start_of_turn>user\nq<end_of_turn>\n<start_of_turn>model\nx<end_of_turn>\n"
        "<start_of_turn>user\nr<end_of_turn>\n<start_of_turn>model\n"
    )
    assert _text([M("user", "q"), M("assistant", "Once upon")]) == (
        "<start_of_turn>user\nq<end_of_turn>\n<start_of_turn>model\nOnce upon"
    )


@pytest.fixture(scope="module")
def gemma_vocab() -> Llama:
    return Llama(str(model_files.gguf_path(GEMMA)), vocab_only=True, verbose=False)


def _count(vocab: Llama, text: str) -> int:
    return len(vocab.tokenize(text.encode(), add_bos=True, special=True))


def test_engine_renders_system_and_merged_turns(client: ollama.Client, gemma_vocab: Llama) -> None:
    msgs = [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Hello there."},
        {"role": "user", "content": "Name a colour."},
    ]
    reply = client.chat(model=GEMMA, messages=msgs, options=TWO)
    expected = (
        "<start_of_turn>user\nYou are terse.\n\nHello there.\n\nName a colour.<end_of_turn>\n"
        "<start_of_turn>model\n"
    )
    assert reply.prompt_eval_count == _count(gemma_vocab, expected)


def test_truncation_drops_old_messages_and_keeps_the_system(
    client: ollama.Client, gemma_vocab: Llama
) -> None:
    # server/prompt.go chatPrompt (v0.24.0): drop whole messages from the front until the
    # prompt fits num_ctx, keeping the system messages and always the last message.
    system = {"role": "system", "content": "Always answer in French."}
    turns = []
    for i in range(12):
        turns += [
            {"role": "user", "content": f"Question {i}: " + "tell me about the sea " * 6},
            {"role": "assistant", "content": f"Answer {i}: " + "the sea is wide " * 6},
        ]
    msgs = [system, *turns, {"role": "user", "content": "Last question?"}]
    reply = client.chat(model=GEMMA, messages=msgs, options={**TWO, "num_ctx": 256})

    def rendered(kept: list[dict]) -> str:
        body, sys = "", system["content"] + "\n\n"
        for m in kept:
            if m["role"] == "user":
                body += f"<start_of_turn>user\n{sys}{m['content']}<end_of_turn>\n"
                sys = ""  # only the first user turn carries it
            else:
                body += f"<start_of_turn>model\n{m['content']}<end_of_turn>\n"
        return body + "<start_of_turn>model\n"

    rest = msgs[1:]
    fits = next(
        i
        for i in range(len(rest))
        if _count(gemma_vocab, rendered(rest[i:])) <= 256 or i == len(rest) - 1
    )
    assert 0 < fits < len(rest) - 1  # some, not all, old messages were dropped
    assert reply.prompt_eval_count == _count(gemma_vocab, rendered(rest[fits:]))


# --- the catalog's production entries ------------------------------------------------------
def test_catalog_production_entries_are_what_ollamas_library_serves() -> None:
    # /api/tags of the library tags as pulled (routes.go ListHandler reports the GGUF's
    # architecture as family): gemma3:4b digest a2af6cc3eb7f; llama3.2:3b; mistral:7b digest
    # 6577803aa9a0 (Q4_K_M; the earlier f974a74358d6 was Q4_0). Mistral's GGUF is "llama".
    served = {
        "gemma3:4b": ("gemma3", "4.3B", "Q4_K_M"),
        "llama3.2:3b": ("llama", "3.2B", "Q4_K_M"),
        "mistral:7b": ("llama", "7.2B", "Q4_K_M"),
    }
    ours = {
        m.tag: (m.reported_family, m.parameter_size, m.quantization)
        for m in catalog.production_models()
    }
    assert ours == served
