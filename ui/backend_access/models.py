"""Which models the UI offers: the backends' `/api/tags`, filtered by the allow-list.

The list is cached for a short while (it is the same for every user and changes only when
an operator pulls a model), so a page load does not cost a backend round trip each time.
The cache holds no user data, so the UI stays stateless.

Model checks for chat requests (the API can be called without the dropdown):
- with an allow-list (LLM_ALLOWED_MODELS), the allow-list decides, without a backend call;
- without one, the model must be in the backends' current list (cached).

Whether a model sees images (`can_see`) is its backend's /api/show `capabilities`
containing "vision", asked once per model and kept for the process's life (a model's
capabilities are fixed by its files). While the backend cannot be asked (its /api/show
fails, or its model list went unanswered), the catalog says
(`ModelSpec.vision`: the GPU image's Gemma 3), and nothing is kept, so the backend's own
answer is asked again next time. A backend that says nothing of capabilities (older
Ollama, other APIs) counts as blind unless the catalog says otherwise.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

from catalog import family_of, find, local_models, normalize_tag, production_models
from ui.backend_access.client import BackendClient, ModelInfo
from ui.backend_access.labels import ModelLabel, label_for
from ui.errors import BackendError, BackendTimeout, InputRejected
from ui.settings import Settings

logger = logging.getLogger(__name__)

MAX_MODEL_NAME_CHARS = 200
_MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/@+-]*")


class ModelRejected(InputRejected):
    """The requested model cannot be used; `user_message` says why."""


@dataclass(frozen=True)
class ModelChoices:
    """What the picker shows, plus why it may be incomplete."""

    labels: list[ModelLabel]
    problem: str | None = None  # set when the backend could not be asked
    # True: not the backend's answer but what the UI could offer meanwhile (the last list
    # it saw, the allow-list, or the catalog); a page refresh replaces it (ui/pages/status_bar.py).
    provisional: bool = False

    @property
    def dropdown_choices(self) -> list[tuple[str, str]]:
        return [(label.text, label.tag) for label in self.labels]


class ModelDirectory:
    def __init__(self, settings: Settings, client: BackendClient, ttl: float = 30.0) -> None:
        self.settings = settings
        self.client = client
        self.ttl = ttl
        self.allowed = [normalize_tag(m) for m in settings.allowed_models]
        self._cached: tuple[float, list[ModelInfo]] | None = None
        self._asking: asyncio.Future[None] | None = None  # the list request under way
        self._unanswered = False  # the last list request failed (the backend is cold or down)
        self.on_answer: list[Callable[[], None]] = []  # told when a backend answered
        self.on_held: list[Callable[[], None]] = []  # told when a list was held unanswered
        self._vision: dict[str, bool] = {}  # normalized tag -> the backend's answer

    def remember(self, models: list[ModelInfo]) -> None:
        """A list the backends just gave (also from the pre-warm): cache it."""
        self._cached = (time.monotonic(), models)
        self._unanswered = False
        for callback in self.on_answer:
            callback()

    @property
    def seen(self) -> bool:
        """A backend has answered with its list since this process started."""
        return self._cached is not None

    def last_seen(self, *, max_age: float | None = None) -> ModelChoices | None:
        """The last list a backend gave, without asking; None when none answered yet (or,
        with `max_age`, not within that many seconds)."""
        if self._cached is None:
            return None
        if max_age is not None and time.monotonic() - self._cached[0] > max_age:
            return None
        return ModelChoices(self._labels([m for m in self._cached[1] if self.is_allowed(m.name)]))

    def fresh(self) -> ModelChoices | None:
        """The backends' list if one answered within the cache's time (`ttl`)."""
        return self.last_seen(max_age=self.ttl)

    def is_allowed(self, tag: str) -> bool:
        return not self.allowed or normalize_tag(tag) in self.allowed

    async def available(self, *, deadline: float | None = None) -> list[ModelInfo]:
        """Allow-listed models the backends offer. Raises BackendError if none answered.
        Callers at the same time share one request, its answer or its failure: a page's
        load fills several pages at once (ui/pages/page_load.py), and on a cold backend
        each would otherwise wait out its own deadline after the others'."""
        if self._cached is None or time.monotonic() - self._cached[0] > self.ttl:
            if self._asking is None or self._asking.done():
                self._asking = asyncio.ensure_future(self._ask(deadline))
                # Retrieved here too, so a request whose callers all left logs no warning.
                self._asking.add_done_callback(lambda f: f.cancelled() or f.exception())
            # shield: a caller that leaves (a closed page) does not cancel the others' request.
            await asyncio.shield(self._asking)
        assert self._cached is not None
        return [m for m in self._cached[1] if self.is_allowed(m.name)]

    async def _ask(self, deadline: float | None) -> None:
        try:
            models = await self.client.list_models(deadline=deadline)
        except BackendError:
            self._unanswered = True
            raise
        self.remember(models)

    async def choices(self, *, deadline: float | None = None) -> ModelChoices:
        """Picker entries. While the backend cannot be asked (e.g. still starting), what
        the UI can offer meanwhile, marked provisional: the last list a backend gave, else
        the allow-list, else the catalog's models for this kind of backend; the chat
        request then waits for the backend (with the warming banner)."""
        # There is always something to show: do not keep a page waiting on a backend that
        # is still starting (the probe's budget tells warm from cold).
        probe = self.settings.probe_timeout
        deadline = probe if deadline is None else min(deadline, probe)
        try:
            models = await self.available(deadline=deadline)
        except BackendError as exc:
            if isinstance(exc, BackendTimeout):  # held, not refused: an instance starts
                for callback in self.on_held:
                    callback()
            return self.provisional(exc.user_message)
        return ModelChoices(self._labels(models))

    def provisional(self, problem: str | None = None) -> ModelChoices:
        """What the picker offers before the backend answered (see `choices`)."""
        last = self.last_seen()
        if last is not None and last.labels:
            return ModelChoices(last.labels, problem, provisional=True)
        tags = self.allowed or self._catalog_tags()
        labels = [self._label_without_backend(tag) for tag in tags]
        return ModelChoices(labels, problem, provisional=True)

    def _catalog_tags(self) -> list[str]:
        """The catalog's models for this backend: the embedded engine's on this machine,
        the GPU image's otherwise."""
        host = urlsplit(self.client.default_url).hostname or ""
        on_this_machine = host in ("localhost", "::1") or host.startswith("127.")
        specs = local_models() if on_this_machine else production_models()
        return [spec.tag for spec in specs]

    async def can_see(self, model: str) -> bool:
        """Whether `model` takes images (see the module docstring)."""
        key = normalize_tag(model)
        known = self._vision.get(key)
        if known is not None:
            return known
        spec = find(model)
        if self._unanswered:
            # A backend that did not give its list in time will not say what a model can
            # within the probe either: the catalog answers until the backend does.
            return bool(spec and spec.vision)
        try:
            capabilities = await self.client.capabilities(
                model, deadline=self.settings.probe_timeout
            )
        except BackendError as exc:
            logger.info("Could not ask %s for its capabilities: %s", model, exc.user_message)
            return bool(spec and spec.vision)
        sees = "vision" in capabilities or (not capabilities and bool(spec and spec.vision))
        self._vision[key] = sees
        return sees

    @staticmethod
    def _labels(models: list[ModelInfo]) -> list[ModelLabel]:
        return [
            label_for(m.name, reported_family=m.reported_family, parameter_size=m.parameter_size)
            for m in models
        ]

    @staticmethod
    def _label_without_backend(tag: str) -> ModelLabel:
        spec = find(tag)
        size = spec.parameter_size if spec else None
        return label_for(tag, reported_family=family_of(tag), parameter_size=size)

    async def check(self, model: object) -> str:
        """Return the model name to use, or raise ModelRejected naming the problem."""
        if model is None or (isinstance(model, str) and not model.strip()):
            raise ModelRejected("Pick a model first.")
        if not isinstance(model, str):
            raise ModelRejected(f"The model must be a model name, not {type(model).__name__}.")
        name = model.strip()
        if len(name) > MAX_MODEL_NAME_CHARS or not _MODEL_NAME.fullmatch(name):
            raise ModelRejected(f"“{_clip(name)}” is not a valid model name.")
        if self.allowed:
            if not self.is_allowed(name):
                raise ModelRejected(
                    f"The model “{name}” is not offered here. Choose one of: "
                    f"{', '.join(self.allowed)}."
                )
            return name
        try:
            # Briefly: a backend that is slow to list is probably cold, and the chat request
            # itself (with its warming notice) is the better place to wait for it.
            known = [m.name for m in await self.available(deadline=self.settings.probe_timeout)]
        except BackendError:
            # Cannot list right now: let the chat request itself report the backend problem.
            return name
        if normalize_tag(name) not in {normalize_tag(k) for k in known}:
            offered = ", ".join(known) if known else "none right now"
            raise ModelRejected(f"The model “{name}” is not available. Available: {offered}.")
        return name


def _clip(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"
