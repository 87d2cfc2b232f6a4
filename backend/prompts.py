"""Chat prompt formats for the local engine's models.

A prompt is a list of segments: template markers (tokenized with special tokens on) and
message text (tokenized with special tokens off, so a user typing `<|im_start|>` cannot
forge a turn).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from catalog import PromptFormat


@dataclass(frozen=True)
class Segment:
    text: str
    special: bool  # True for template markers


@dataclass(frozen=True)
class Message:
    role: str  # system | user | assistant | tool
    content: str


SMOLLM2_DEFAULT_SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"

# Strings that end a turn, besides the model's end-of-generation tokens.
STOP_STRINGS: dict[PromptFormat, list[str]] = {
    "gemma": ["<end_of_turn>"],
    "chatml": ["<|im_end|>"],
}


def render(fmt: PromptFormat, messages: Sequence[Message]) -> list[Segment]:
    if fmt == "gemma":
        return _gemma(messages)
    return _chatml(messages)


def _gemma(messages: Sequence[Message]) -> list[Segment]:
    # Gemma has no system role: its turn format folds the system text into the first user
    # turn. Roles are `user` and `model`.
    system = "\n\n".join(m.content for m in messages if m.role == "system")
    segments: list[Segment] = []
    first_user = True
    for m in messages:
        if m.role == "system":
            continue
        role = "model" if m.role == "assistant" else "user"
        content = m.content
        if role == "user" and first_user and system:
            content = f"{system}\n\n{content}"
        if role == "user":
            first_user = False
        segments += [
            Segment(f"<start_of_turn>{role}\n", True),
            Segment(content, False),
            Segment("<end_of_turn>\n", True),
        ]
    if first_user and system:  # only a system message was given
        segments += [
            Segment("<start_of_turn>user\n", True),
            Segment(system, False),
            Segment("<end_of_turn>\n", True),
        ]
    segments.append(Segment("<start_of_turn>model\n", True))
    return segments


def _chatml(messages: Sequence[Message]) -> list[Segment]:
    # SmolLM2's GGUF template: ChatML with a default system prompt when none is given.
    segments: list[Segment] = []
    if not messages or messages[0].role != "system":
        messages = [Message("system", SMOLLM2_DEFAULT_SYSTEM), *messages]
    for m in messages:
        segments += [
            Segment(f"<|im_start|>{m.role}\n", True),
            Segment(m.content, False),
            Segment("<|im_end|>\n", True),
        ]
    segments.append(Segment("<|im_start|>assistant\n", True))
    return segments


def template_text(fmt: PromptFormat) -> str:
    """The template in Ollama's Go-template notation, for `/api/show`."""
    if fmt == "gemma":
        return (
            '{{- range .Messages }}<start_of_turn>{{ if eq .Role "assistant" }}model'
            "{{ else }}user{{ end }}\n{{ .Content }}<end_of_turn>\n{{ end }}"
            "<start_of_turn>model\n"
        )
    return (
        "{{- range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n{{ end }}"
        "<|im_start|>assistant\n"
    )
