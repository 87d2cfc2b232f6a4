"""The local CPU engine: loads bundled models with llama-cpp-python and generates text.

It follows the pinned Ollama release (0.24.0, see /Dockerfile.llm) where the UI can see the
difference; each such behaviour has a test in tests/test_engine_ollama.py citing the Ollama source.

Concurrency model (Ollama's OLLAMA_NUM_PARALLEL / OLLAMA_MAX_QUEUE):
- each loaded model has up to `num_parallel` llama.cpp contexts ("slots"); one request
  uses one slot, so parallel requests never share state and never mix outputs;
- requests beyond the free slots wait as long as it takes (Ollama's per-model semaphore);
- `max_queue` bounds only the requests waiting for a model that is not loaded yet (Ollama's
  pending-scheduler channel); beyond it, `QueueFull` (503);
- generation runs in a worker thread (llama.cpp releases the GIL) and hands tokens to the
  event loop; setting the request's cancel event stops it at the next token.
Models unload after their keep-alive (default 5 minutes) once no request uses them; a request's
keep_alive sticks to the loaded model, an omitted one leaves it as it is.
"""

from __future__ import annotations

import asyncio
import codecs
import logging
import os
import random
import re
import sys
import threading
import time
import traceback
from collections.abc import AsyncGenerator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import llama_cpp
from llama_cpp import Llama

import catalog
from backend import model_files, prompts
from backend.threads import ThreadChooser
from catalog import ModelSpec

log = logging.getLogger("backend.engine")
SLOT_WAIT_LOGGED_S = 5.0
WAIT_LOGGED_S = 15.0  # a request still waiting for its model and a context is logged, with why

# Ollama's default context when OLLAMA_CONTEXT_LENGTH is unset and there is under 23 GiB of VRAM
# (server/routes.go Serve, "vram-based default context", v0.24.0); the GPU image sets 4096 too.
DEFAULT_NUM_CTX = 4096
DEFAULT_KEEP_ALIVE = 300.0  # seconds, Ollama's default of 5 minutes
# "Forever": Ollama turns a negative keep-alive into time.Duration(math.MaxInt64) (api/types.go
# Duration.UnmarshalJSON, envconfig KeepAlive; v0.24.0), so it expires ~292 years from now.
FOREVER = 9_223_372_036.854775807  # seconds
PREFILL_CHUNK = 64  # prompt tokens per llama.cpp call; the thread count is re-picked between
# Llama(verbose=False) silences llama.cpp by pointing fds 1 and 2 (and sys.stdout/stderr) at
# /dev/null and back (llama_cpp/_utils.py suppress_stdout_stderr). Two at once interleave: the
# second saves the first's /dev/null as "the original" and restores it, so the process's
# stderr stays silenced for good. So one context is built at a time.
_BUILDING = threading.Lock()


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity, e.g. under `taskset` or a
    container's cpuset), not every core of the machine."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


class EngineError(Exception):
    status_code = 500


class ModelNotFound(EngineError):
    status_code = 404

    def __init__(self, name: str) -> None:
        super().__init__(f"model '{name}' not found")


class InputTooLong(EngineError):
    status_code = 400

    def __init__(self) -> None:
        # runner/ollamarunner/runner.go errorInputTooLong (v0.24.0), sent with truncate=false.
        super().__init__("the input length exceeds the context length")


class RunnerStopped(EngineError):
    """Generation failed inside llama.cpp (Ollama's runner process died or failed)."""

    def __init__(self, detail: str) -> None:
        # Ollama's words when its runner fails (llm/server.go Completion, v0.24.0).
        super().__init__(
            "model runner has unexpectedly stopped, this may be due to resource limitations "
            f"or an internal error, check ollama server logs for details: {detail}"
        )


class QueueFull(EngineError):
    status_code = 503

    def __init__(self) -> None:
        # Ollama's wording when OLLAMA_MAX_QUEUE is exceeded.
        super().__init__("server busy, please try again.  maximum pending requests exceeded")


@dataclass
class Options:
    """Ollama `options` that this engine honours (Ollama's defaults)."""

    temperature: float = 0.8
    top_p: float = 0.9
    top_k: int = 40
    min_p: float = 0.0
    repeat_penalty: float = 1.1
    num_predict: int = -1  # -1: until the model stops or the context is full
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    num_ctx: int = DEFAULT_NUM_CTX
    truncate: bool = True  # request field, not an option: False makes a too-long prompt a 400


@dataclass
class Stats:
    prompt_eval_count: int = 0
    prompt_eval_duration: int = 0  # all durations in nanoseconds, as Ollama
    eval_count: int = 0
    eval_duration: int = 0
    load_duration: int = 0
    done_reason: str = "stop"
    context: list[int] = field(default_factory=list)


@dataclass
class _Slot:
    llama: Llama
    n_ctx: int
    busy: bool = False


class _LoadedModel:
    def __init__(self, spec: ModelSpec, num_parallel: int, n_threads: int) -> None:
        self.spec = spec
        self.threads = ThreadChooser(n_threads)  # for a stream generating alone
        self.slots: list[_Slot] = []
        self.free = asyncio.Semaphore(num_parallel)
        self.create_lock = asyncio.Lock()
        self.active = 0
        self.keep_alive: float = DEFAULT_KEEP_ALIVE  # seconds; FOREVER, or 0 = unload when idle
        # Wall clock; None until a request has finished on the model (Ollama sets expiresAt
        # only when the runner goes idle, sched.go processCompleted).
        self.expires_at: float | None = None
        self.size = model_files.gguf_path(spec.tag).stat().st_size


@dataclass
class Loading:
    """A model being loaded (what /api/ps may show of it)."""

    spec: ModelSpec
    keep_alive: float
    num_ctx: int
    size: int


_GO_DURATION = re.compile(r"([0-9]*(?:\.[0-9]*)?)(ns|us|\u00b5s|\u03bcs|ms|s|m|h)")
_GO_UNITS = {"ns": 1e-9, "us": 1e-6, "\u00b5s": 1e-6, "\u03bcs": 1e-6, "ms": 1e-3}
_GO_UNITS.update({"s": 1.0, "m": 60.0, "h": 3600.0})


def parse_go_duration(text: str) -> float:
    """Seconds of a Go duration string, as Go's time.ParseDuration reads it ("5m", "1h30m",
    "-1m", "0"); a number without a unit other than 0 is an error, as in Go."""
    rest = text
    sign = 1.0
    if rest[:1] in ("-", "+"):
        sign = -1.0 if rest[0] == "-" else 1.0
        rest = rest[1:]
    if rest == "0":
        return 0.0
    if not rest:
        raise ValueError(f'time: invalid duration "{text}"')
    total, pos = 0.0, 0
    while pos < len(rest):
        match = _GO_DURATION.match(rest, pos)
        if match is None or match.group(1) in ("", "."):
            if re.fullmatch(r"[0-9.]+", rest[pos:]):
                raise ValueError(f'time: missing unit in duration "{text}"')
            raise ValueError(f'time: invalid duration "{text}"')
        total += float(match.group(1)) * _GO_UNITS[match.group(2)]
        pos = match.end()
    return sign * total


def parse_keep_alive(value: Any) -> float | None:
    """A request's keep_alive as Ollama reads it (api/types.go Duration.UnmarshalJSON,
    v0.24.0): a JSON number is seconds, a string a Go duration ("5m"; "-1" without a unit is
    an error); negative means forever. Returns seconds (FOREVER for forever), None when
    absent. Raises ValueError."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ValueError(f"keep_alive: Unsupported type: '{type(value).__name__}'")
    seconds = float(value) if not isinstance(value, str) else parse_go_duration(value)
    return FOREVER if seconds < 0 else seconds


def parse_env_keep_alive(text: str) -> float:
    """OLLAMA_KEEP_ALIVE as Ollama reads it (envconfig KeepAlive, v0.24.0): a Go duration, or
    else a whole number of seconds ("-1" = forever). Raises ValueError for anything else
    (Ollama silently falls back to 5 minutes; a typo here should not go unnoticed)."""
    text = text.strip()
    try:
        seconds = parse_go_duration(text)
    except ValueError:
        if not re.fullmatch(r"[-+]?[0-9]+", text):
            raise ValueError(
                f"keep-alive {text!r} is neither a duration like '5m' nor whole seconds"
            ) from None
        seconds = float(int(text))
    return FOREVER if seconds < 0 else seconds


PsWhileLoading = Literal["list", "wait"]


class Engine:
    """`ps_while_loading` is what /api/ps does while a model loads: "list" it, as the pinned
    Ollama 0.24.0 does (server/sched.go load() puts the runner into s.loaded before
    WaitUntilRunning; routes.go PsHandler lists s.sched.loaded), or "wait" until the load is
    done, as Ollama 0.32.4+ does (sched.go loadedModels() takes each runner's refMu, which a
    loading runner holds until it runs)."""

    def __init__(
        self,
        *,
        num_parallel: int = 4,
        max_queue: int = 512,
        default_keep_alive: float = DEFAULT_KEEP_ALIVE,
        default_num_ctx: int = DEFAULT_NUM_CTX,
        n_threads: int | None = None,
        ps_while_loading: PsWhileLoading = "list",
        hold_loads_while: Path | None = None,
    ) -> None:
        self.num_parallel = max(1, num_parallel)
        self.max_queue = max_queue
        self.default_keep_alive = default_keep_alive
        self.default_num_ctx = default_num_ctx
        self.n_threads = n_threads or usable_cores()
        self.ps_while_loading = ps_while_loading
        # Tests only: while this file exists a load does not finish, so a test can see a load
        # in progress however fast the machine loads (it removes the file to let it end).
        self.hold_loads_while = hold_loads_while
        self.loaded: dict[str, _LoadedModel] = {}
        self.loading: dict[str, Loading] = {}
        self._loads_done = asyncio.Event()
        self._loads_done.set()
        self._pending = 0  # requests waiting for a model that is not loaded yet
        self._generating = 0
        self._load_locks: dict[str, asyncio.Lock] = {}
        self._reaper: asyncio.Task[None] | None = None

    # --- catalog -------------------------------------------------------------------------
    @staticmethod
    def available() -> list[ModelSpec]:
        return catalog.local_models()

    @staticmethod
    def resolve(name: str) -> ModelSpec:
        spec = catalog.find(name)
        if spec is None or not spec.local:
            raise ModelNotFound(name)
        return spec

    # --- lifecycle -----------------------------------------------------------------------
    def start(self) -> None:
        self._reaper = asyncio.get_running_loop().create_task(self._reap_forever())

    async def close(self) -> None:
        if self._reaper:
            self._reaper.cancel()
        for tag in list(self.loaded):
            self._unload(tag)

    async def _reap_forever(self) -> None:
        while True:
            await asyncio.sleep(0.5)
            now = time.time()
            for tag, model in list(self.loaded.items()):
                if model.active == 0 and model.expires_at is not None and now >= model.expires_at:
                    log.info("keep-alive expired, unloading %s", tag)
                    self._unload(tag)

    def _unload(self, tag: str) -> None:
        model = self.loaded.pop(tag, None)
        if model:
            for slot in model.slots:
                slot.llama.close()

    async def ensure_loaded(self, spec: ModelSpec, keep_alive: float | None = None) -> _LoadedModel:
        """Load the model if needed and apply the request's keep_alive to it.

        Ollama (sched.go, v0.24.0): a new runner gets the request's keep_alive or else
        OLLAMA_KEEP_ALIVE (load()); a loaded one takes the request's keep_alive when it has
        one and keeps its own otherwise (useLoadedRunner). Requests for a model that is not
        loaded wait in a queue of at most `max_queue` (GetRunner's pendingReqCh), else 503.
        """
        model = self.loaded.get(spec.tag)
        if model is None:
            model = await self._load(spec, keep_alive)
        if keep_alive is not None:
            model.keep_alive = keep_alive
        return model

    async def _load(self, spec: ModelSpec, keep_alive: float | None) -> _LoadedModel:
        lock = self._load_locks.setdefault(spec.tag, asyncio.Lock())
        queued = lock.locked()  # another request is loading it: this one waits in the queue
        if queued:
            if self._pending >= self.max_queue:
                raise QueueFull()
            self._pending += 1
        try:
            async with lock:
                return await self._load_locked(spec, keep_alive)
        finally:
            if queued:
                self._pending -= 1

    async def _load_locked(self, spec: ModelSpec, keep_alive: float | None) -> _LoadedModel:
        model = self.loaded.get(spec.tag)
        if model is not None:
            return model
        t0 = time.perf_counter_ns()
        ka = self.default_keep_alive if keep_alive is None else keep_alive
        size = model_files.gguf_path(spec.tag).stat().st_size
        self.loading[spec.tag] = Loading(spec, ka, self.default_num_ctx, size)
        self._loads_done.clear()
        try:
            model = await asyncio.to_thread(_LoadedModel, spec, self.num_parallel, self.n_threads)
            slot = await asyncio.to_thread(self._new_slot, spec, self.default_num_ctx)
            await self._held_load()
        finally:
            del self.loading[spec.tag]
            if not self.loading:
                self._loads_done.set()
        model.slots.append(slot)
        model.keep_alive = ka
        self.loaded[spec.tag] = model
        log.info("loaded %s in %.2fs", spec.tag, (time.perf_counter_ns() - t0) / 1e9)
        return model

    async def _held_load(self) -> None:
        while self.hold_loads_while is not None and self.hold_loads_while.exists():
            await asyncio.sleep(0.02)

    async def loads_finished(self) -> None:
        """Return once no model is loading (what /api/ps waits for in "wait" mode)."""
        await self._loads_done.wait()

    def _new_slot(self, spec: ModelSpec, n_ctx: int) -> _Slot:
        # One thread while building, beside running streams (one context is built at a time,
        # see _BUILDING). Each generation sets its own thread count before it starts.
        with _BUILDING:
            llama = Llama(
                model_path=str(model_files.gguf_path(spec.tag)),
                n_ctx=n_ctx,
                n_batch=512,
                n_threads=1,
                n_threads_batch=1,
                verbose=False,
            )
        return _Slot(llama=llama, n_ctx=n_ctx)

    def went_idle(self, model: _LoadedModel) -> None:
        """A request on the model finished (sched.go processCompleted, v0.24.0): once none
        is left, a zero keep_alive unloads it, any other sets its expiry from now."""
        if model.active > 0:
            return
        if model.keep_alive == 0:
            self._unload(model.spec.tag)
        else:
            model.expires_at = time.time() + model.keep_alive

    async def unload(self, name: str) -> None:
        spec = self.resolve(name)
        model = self.loaded.get(spec.tag)
        if model is not None:
            model.keep_alive = 0
            model.expires_at = time.time()
            if model.active == 0:
                self._unload(spec.tag)

    # --- slots ---------------------------------------------------------------------------
    async def acquire(
        self, spec: ModelSpec, num_ctx: int, keep_alive: float | None, started_ns: int
    ) -> tuple[_LoadedModel, _Slot, int]:
        """Wait for the model (loading it if needed) and then for a free slot of it.

        Returns the model, the slot, and the load duration in nanoseconds: as Ollama's
        load_duration (server/routes.go ChatHandler, checkpointLoaded - checkpointStart,
        v0.24.0), from `started_ns` (perf_counter_ns at request start) to the model being
        ready, plus building a context of a new size. Waiting for a slot is not part of it
        (Ollama waits on the runner's semaphore later, in llm/server.go Completion).
        Raises QueueFull when too many requests already wait for models to load.
        """
        late = asyncio.get_running_loop().call_later(WAIT_LOGGED_S, self._log_late_wait, spec)
        try:
            return await self._acquire(spec, num_ctx, keep_alive, started_ns)
        finally:
            late.cancel()

    def _log_late_wait(self, spec: ModelSpec) -> None:
        models = ", ".join(
            f"{tag} ({sum(s.busy for s in m.slots)}/{len(m.slots)} contexts busy, "
            f"{m.active} requests on it, {m.free._value} slots free)"
            for tag, m in self.loaded.items()
        )
        log.warning(
            "a request for %s still waits for the model and a context after %.0f s; "
            "loaded: %s; loading: %s; %d queued for a load, %d generating",
            spec.tag, WAIT_LOGGED_S, models or "none", ", ".join(self.loading) or "none",
            self._pending, self._generating,
        )  # fmt: skip

    async def _acquire(
        self, spec: ModelSpec, num_ctx: int, keep_alive: float | None, started_ns: int
    ) -> tuple[_LoadedModel, _Slot, int]:
        model = await self.ensure_loaded(spec, keep_alive)
        load_ns = time.perf_counter_ns() - started_ns
        model.active += 1  # counts waiting users too, so it is not unloaded under them
        waiting_since = time.monotonic()
        try:
            await model.free.acquire()  # unbounded wait, like Ollama's semaphore
            waited = time.monotonic() - waiting_since
            if waited > SLOT_WAIT_LOGGED_S:  # all slots busy that long: worth a trace
                log.info("waited %.1f s for a free slot of %s", waited, spec.tag)
        except BaseException:
            model.active -= 1
            self.went_idle(model)
            raise
        try:
            slot, extra_load = await self._take_slot(model, spec, num_ctx)
        except BaseException:
            model.free.release()
            model.active -= 1
            self.went_idle(model)
            raise
        return model, slot, load_ns + extra_load

    async def _take_slot(
        self, model: _LoadedModel, spec: ModelSpec, num_ctx: int
    ) -> tuple[_Slot, int]:
        # Decide under the lock, build the new context outside it, so that a stream that
        # finds a free context does not wait for another one's context to be built.
        async with model.create_lock:
            free = [s for s in model.slots if not s.busy]
            match = next((s for s in free if s.n_ctx == num_ctx), None)
            if match is not None:
                match.busy = True
                return match, 0
            if free:  # all contexts exist but none has this size: replace a free one
                old = free[0]
                model.slots.remove(old)
                old.llama.close()
            placeholder = _Slot(llama=None, n_ctx=num_ctx, busy=True)  # type: ignore[arg-type]
            model.slots.append(placeholder)
        t0 = time.perf_counter_ns()
        try:
            built = await asyncio.to_thread(self._new_slot, spec, num_ctx)
        except BaseException:
            model.slots.remove(placeholder)
            raise
        placeholder.llama = built.llama
        return placeholder, time.perf_counter_ns() - t0

    def release(self, model: _LoadedModel, slot: _Slot) -> None:
        slot.busy = False
        model.free.release()
        model.active -= 1
        self.went_idle(model)

    # --- generation ----------------------------------------------------------------------
    def start_generation(
        self,
        model: _LoadedModel,
        slot: _Slot,
        *,
        messages: list[prompts.Message] | None,
        raw_prompt: str | None,
        options: Options,
        stats: Stats,
    ) -> Generation:
        return Generation(self, model, slot, messages, raw_prompt, options, stats)


class Generation:
    """One request's generation on a leased slot.

    The slot goes back to the pool only once the worker thread has stopped, however the
    request ends (finished, failed, client gone, or never started), so two threads never
    drive one llama.cpp context.
    """

    def __init__(
        self,
        engine: Engine,
        model: _LoadedModel,
        slot: _Slot,
        messages: list[prompts.Message] | None,
        raw_prompt: str | None,
        options: Options,
        stats: Stats,
    ) -> None:
        self._engine, self._model, self._slot = engine, model, slot
        self._args = (messages, raw_prompt, options, stats)
        self._cancel = threading.Event()
        self._thread: threading.Thread | None = None
        self._thread_done = False
        self._closed = False
        self._released = False

    async def pieces(self) -> AsyncGenerator[str, None]:
        """Stream text pieces; fills `stats` as it goes."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()

        def emit(kind: str, value: Any) -> None:
            loop.call_soon_threadsafe(queue.put_nowait, (kind, value))

        def on_exit() -> None:  # last act of the worker thread
            loop.call_soon_threadsafe(self._thread_finished)

        messages, raw_prompt, options, stats = self._args
        self._engine._generating += 1
        self._thread = threading.Thread(
            target=_generate_in_thread,
            args=(
                self._model.spec,
                self._slot.llama,
                messages,
                raw_prompt,
                options,
                stats,
                emit,
                self._cancel,
                _StreamThreads(self._engine, self._model),
                on_exit,
            ),
            name=f"generate-{self._model.spec.tag}",
            daemon=True,
        )
        self._thread.start()
        try:
            while True:
                kind, value = await queue.get()
                if kind == "text":
                    yield value
                elif kind == "error":
                    if isinstance(value, EngineError):
                        raise value
                    raise RunnerStopped(str(value))
                else:  # done
                    return
        finally:
            self._cancel.set()

    def describe(self) -> str:
        """The model's slots and where the worker thread is (for a log line)."""
        model = self._model
        busy = sum(s.busy for s in model.slots)
        state = (
            f"{model.spec.tag}: {busy}/{len(model.slots)} contexts busy, {model.active} "
            f"requests on it, {self._engine._generating} generating in all"
        )
        thread = self._thread
        frame = sys._current_frames().get(thread.ident or 0) if thread is not None else None
        if frame is None:
            return state + ("; worker not started" if thread is None else "; worker finished")
        return state + "; worker at:\n" + "".join(traceback.format_stack(frame, limit=6))

    def close(self) -> None:
        """Stop generating (at the next token) and give the slot back once stopped."""
        self._closed = True
        self._cancel.set()
        if self._thread is None or self._thread_done:
            self._release()

    def _thread_finished(self) -> None:
        self._thread_done = True
        self._engine._generating -= 1
        if self._closed:
            self._release()

    def _release(self) -> None:
        if not self._released:
            self._released = True
            self._engine.release(self._model, self._slot)


class _StreamThreads:
    """A stream's thread count: one each while streams run in parallel (llama.cpp's
    thread pools crawl when they oversubscribe the cores); alone, what the model's
    ThreadChooser measured to be faster. Called from the worker thread."""

    def __init__(self, engine: Engine, model: _LoadedModel) -> None:
        self._engine, self._model = engine, model

    def pick(self) -> int:
        return 1 if self._engine._generating > 1 else self._model.threads.pick()

    def record(self, threads: int, seconds: float) -> None:
        if self._engine._generating <= 1:  # parallel streams' times say nothing about it
            self._model.threads.record(threads, seconds)


def _tokenize(llama: Llama, segments: list[prompts.Segment]) -> list[int]:
    tokens: list[int] = []
    for i, seg in enumerate(segments):
        tokens += llama.tokenize(seg.text.encode(), add_bos=(i == 0), special=seg.special)
    return tokens


def _chat_tokens(
    llama: Llama,
    fmt: catalog.PromptFormat,
    messages: list[prompts.Message],
    n_ctx: int,
    truncate: bool,
) -> list[int]:
    """The prompt of a chat, fitted to the context as Ollama's server/prompt.go chatPrompt
    (v0.24.0) does: drop whole messages from the front until the rendered prompt fits,
    always keeping the system messages and the last message. truncate=false keeps all."""
    for start in range(len(messages) if truncate else 0):
        kept = [m for m in messages[:start] if m.role == "system"] + messages[start:]
        tokens = _tokenize(llama, prompts.render(fmt, kept))
        if len(tokens) <= n_ctx or start == len(messages) - 1:
            return tokens
    return _tokenize(llama, prompts.render(fmt, messages))


def _generate_in_thread(
    spec: ModelSpec,
    llama: Llama,
    messages: list[prompts.Message] | None,
    raw_prompt: str | None,
    options: Options,
    stats: Stats,
    emit: Callable[[str, Any], None],
    cancel: threading.Event,
    stream_threads: _StreamThreads,
    on_exit: Callable[[], None],
) -> None:
    outcome: tuple[str, Any] = ("error", RuntimeError("generation stopped"))
    try:
        _generate(spec, llama, messages, raw_prompt, options, stats, emit, cancel, stream_threads)
        outcome = ("done", None)
    except EngineError as exc:  # the request's own fault (e.g. too long): a status for it
        log.info("generation refused: %s", exc)
        outcome = ("error", exc)
    except Exception as exc:  # reported to the client (a status if nothing was sent yet)
        log.exception("generation failed")
        outcome = ("error", exc)
    finally:
        # llama.cpp is no longer used here: mark the slot free before the request hears
        # "done", so the client's next request finds it free (callbacks run in order).
        on_exit()
        emit(*outcome)


def _generate(
    spec: ModelSpec,
    llama: Llama,
    messages: list[prompts.Message] | None,
    raw_prompt: str | None,
    options: Options,
    stats: Stats,
    emit: Callable[[str, Any], None],
    cancel: threading.Event,
    stream_threads: _StreamThreads,
) -> None:
    assert spec.prompt_format is not None
    threads = stream_threads.pick()
    llama_cpp.llama_set_n_threads(llama.ctx, threads, threads)
    n_ctx = llama.n_ctx()
    if raw_prompt is not None:
        tokens = llama.tokenize(raw_prompt.encode(), add_bos=True, special=True)
    else:
        tokens = _chat_tokens(llama, spec.prompt_format, messages or [], n_ctx, options.truncate)
    if len(tokens) > n_ctx and not options.truncate:
        raise InputTooLong()
    # This engine cannot shift its context while generating as Ollama's runner does, so a
    # prompt that leaves too little room to answer keeps its beginning-of-sequence token and
    # its most recent part.
    room = max(n_ctx // 4, 1) if options.num_predict < 0 else min(options.num_predict, n_ctx // 2)
    if len(tokens) > n_ctx - room:
        keep = n_ctx - room
        tokens = tokens[:1] + tokens[len(tokens) - keep + 1 :]
    stats.prompt_eval_count = len(tokens)

    stops = list(options.stop) + prompts.STOP_STRINGS[spec.prompt_format]
    hold = max(len(s) for s in stops) if stops else 0
    vocab = llama._model.vocab
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    seed = options.seed if options.seed is not None else random.randrange(2**31)
    llama.set_seed(seed)

    pending = ""  # text not yet sent: it may be the start of a stop string
    generated: list[int] = []
    limit = options.num_predict
    t_start = time.perf_counter_ns()
    t_first: int | None = None
    t_token = 0  # when the previous token arrived
    stats.done_reason = "stop"
    threads = _prefill(llama, tokens, stream_threads, threads, cancel)
    sampled: Iterator[int] = llama.generate(
        tokens,
        top_k=options.top_k,
        top_p=options.top_p,
        min_p=options.min_p,
        temp=options.temperature,
        repeat_penalty=options.repeat_penalty,
    )
    if cancel.is_set():  # during the prefill: nothing more to evaluate
        stats.done_reason = "cancelled"
        sampled = iter(())
    for token in sampled:
        now = time.perf_counter_ns()
        if t_first is None:
            t_first = now
        else:  # this token's decode ran with `threads` threads
            stream_threads.record(threads, (now - t_token) / 1e9)
        t_token = now
        wanted = stream_threads.pick()
        if wanted != threads:  # other streams started or ended, or the chooser changed
            threads = wanted
            llama_cpp.llama_set_n_threads(llama.ctx, threads, threads)
        if cancel.is_set():
            stats.done_reason = "cancelled"
            break
        if llama_cpp.llama_vocab_is_eog(vocab, token):
            break
        generated.append(token)
        pending += decoder.decode(llama.detokenize([token], special=False))
        cut = _find_stop(pending, stops)
        if cut is not None:
            pending = pending[:cut]
            break
        safe = len(pending) - _stop_prefix_len(pending, stops, hold)
        if safe > 0:
            emit("text", pending[:safe])
            pending = pending[safe:]
        if 0 <= limit <= len(generated):
            stats.done_reason = "length"
            break
        if len(tokens) + len(generated) >= n_ctx:
            stats.done_reason = "length"
            break
    pending += decoder.decode(b"", final=True)
    if pending and stats.done_reason != "cancelled":
        emit("text", pending)
    t_end = time.perf_counter_ns()
    t_first = t_first or t_end
    stats.prompt_eval_duration = t_first - t_start
    stats.eval_count = len(generated)
    stats.eval_duration = max(t_end - t_first, 1)
    stats.context = tokens + generated
    if stats.done_reason == "cancelled":
        log.info("client went away: stopped %s after %d tokens", spec.tag, len(generated))


def _prefill(
    llama: Llama,
    tokens: list[int],
    stream_threads: _StreamThreads,
    threads: int,
    cancel: threading.Event,
) -> int:
    """Evaluate all but the last prompt token in chunks; returns the thread count in use.

    Between chunks the thread count is picked again: when several streams start at once,
    the first one found itself alone and would prefill with every core while the others
    start their own threads, and oversubscribed llama.cpp threads crawl (a 40-token
    prompt took 9 s). A cancelled request stops between chunks. What the slot already holds
    from an earlier request (a common prefix) is kept, as llama.generate() would; it then
    finds the whole prefix cached and evaluates only the last token.
    """
    end = len(tokens) - 1
    common, cached = 0, min(llama.n_tokens, end)
    while common < cached and llama.input_ids[common] == tokens[common]:
        common += 1
    llama.n_tokens = common  # eval() drops the KV cache beyond it
    for start in range(common, end, PREFILL_CHUNK):
        if cancel.is_set():
            break
        wanted = stream_threads.pick()
        if wanted != threads:
            threads = wanted
            llama_cpp.llama_set_n_threads(llama.ctx, threads, threads)
        llama.eval(tokens[start : min(start + PREFILL_CHUNK, end)])
    return threads


def _find_stop(text: str, stops: list[str]) -> int | None:
    hits = [i for i in (text.find(s) for s in stops if s) if i >= 0]
    return min(hits) if hits else None


def _stop_prefix_len(text: str, stops: list[str], hold: int) -> int:
    """Length of the longest end of `text` that could begin a stop string."""
    for n in range(min(hold, len(text)), 0, -1):
        tail = text[-n:]
        if any(s.startswith(tail) for s in stops):
            return n
    return 0
