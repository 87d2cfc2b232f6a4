"""Friendly names for models in the picker.

The backend's `/api/tags` says which models exist; the catalog only adds a human name and
marks base (non-chat) models. A model the catalog does not know still gets a label built
from what the backend reports (family, parameter size), so new models show up sensibly.
"""

from __future__ import annotations

from dataclasses import dataclass

from catalog import FAMILY_LABELS, family_of, find


@dataclass(frozen=True)
class ModelLabel:
    tag: str
    display_name: str  # "Gemma 3 270M (base)" or the tag itself
    family_label: str  # "Gemma" / "Llama" / "Mistral" / "Other"
    parameter_size: str | None  # "270M"
    chat_tuned: bool

    @property
    def text(self) -> str:
        """One line for the dropdown, e.g.
        "Gemma 3 270M (base) — Gemma · 270M · base model, not chat-tuned"."""
        parts = [self.family_label]
        if self.parameter_size:
            parts.append(self.parameter_size)
        if not self.chat_tuned:
            parts.append("base model, not chat-tuned")
        return f"{self.display_name} — {' · '.join(parts)}"


def label_for(
    tag: str,
    *,
    reported_family: str | None = None,
    parameter_size: str | None = None,
) -> ModelLabel:
    """Label a model from the catalog, falling back to what the backend reported."""
    spec = find(tag)
    family = family_of(tag, reported_family)
    if spec is not None:
        return ModelLabel(
            tag=tag,
            display_name=spec.display_name,
            family_label=spec.family_label,
            parameter_size=spec.parameter_size or parameter_size,
            chat_tuned=spec.chat_tuned,
        )
    return ModelLabel(
        tag=tag,
        display_name=tag,
        family_label=FAMILY_LABELS.get(family, "Other"),
        parameter_size=parameter_size or None,
        # Unknown models are assumed to be chat models: Ollama's library tags mostly are.
        chat_tuned=True,
    )


def display_name(tag: str) -> str:
    """How every text shown to users names a model: the catalog's name, else the tag."""
    spec = find(tag)
    return spec.display_name if spec else tag
