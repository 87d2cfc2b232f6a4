"""Which models the UI offers: the backends' `/api/tags`, filtered by the allow-list.

The list is cached for a short while (it is the same for every user and changes only when
an operator pulls a model), so a page load does not cost a backend round trip each time.
The cache holds no user data, so the UI stays stateless.

Model checks for chat requests (the API can be called without the dropdown):
- with an allow-list (LLM_ALLOWED_MODELS), the allow-list decides, without a backend call;
- without one, the model must be in the backends' current list (cached).
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from dataclasses import dataclass

from catalog import family_of, find, normalize_tag
from ui.backend_client import BackendClient, ModelInfo
from ui.errors import BackendError, InputRejected
from ui.model_labels import ModelLabel, label_for
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
        self._lock = asyncio.Lock()

    def is_allowed(self, tag: str) -> bool:
        return not self.allowed or normalize_tag(tag) in self.allowed

    async def available(self, *, deadline: float | None = None) -> list[ModelInfo]:
        """Allow-listed models the backends offer. Raises BackendError if none answered."""
        async with self._lock:
            now = time.monotonic()
            if self._cached is None or now - self._cached[0] > self.ttl:
                models = await self.client.list_models(deadline=deadline)
                self._cached = (time.monotonic(), models)
            models = self._cached[1]
        return [m for m in models if self.is_allowed(m.name)]

    async def choices(self, *, deadline: float | None = None) -> ModelChoices:
        """Picker entries. If the backend cannot be asked (e.g. still starting), fall back to
        the allow-list so the user can pick and send; the chat request then waits for it."""
        if self.allowed and deadline is not None:
            # The allow-list alone can fill the picker: do not keep a page waiting on a
            # backend that is still starting (the probe's budget tells warm from cold).
            deadline = min(deadline, self.settings.probe_timeout)
        try:
            models = await self.available(deadline=deadline)
        except BackendError as exc:
            fallback = [self._label_without_backend(tag) for tag in self.allowed]
            return ModelChoices(fallback, problem=exc.user_message)
        labels = [
            label_for(m.name, reported_family=m.reported_family, parameter_size=m.parameter_size)
            for m in models
        ]
        return ModelChoices(labels)

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
