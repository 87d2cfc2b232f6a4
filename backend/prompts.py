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
    system, collated = collate(messages)
    if fmt == "gemma":
        return _gemma(system, collated)
    return _chatml(collated)


def collate(messages: Sequence[Message]) -> tuple[str, list[Message]]:
    """Ollama's template/template.go collate() (v0.24.0): consecutive messages of the same
    role (except tool) become one, their contents joined by a blank line; it also returns
    all system texts joined the same way (the template's `.System`)."""
    system = "\n\n".join(m.content for m in messages if m.role == "system")
    collated: list[Message] = []
    for m in messages:
        if collated and collated[-1].role == m.role and m.role != "tool":
            collated[-1] = Message(m.role, collated[-1].content + "\n\n" + m.content)
        else:
            collated.append(m)
    return system, collated


# The template of Ollama's library model gemma3:270m (the tag this engine serves), blob
# 4b19ac7dd2fb: https://ollama.com/library/gemma3:270m/blobs/4b19ac7dd2fb . The system text goes
# into the first user turn; system messages are no turn of their own. (gemma3:4b's template,
# blob e0a42594d802, instead renders each system message as a user turn of its own.)
GEMMA3_270M_TEMPLATE = (
    "{{- $systemPromptAdded := false }}\n"
    "{{- range $i, $_ := .Messages }}\n"
    "{{- $last := eq (len (slice $.Messages $i)) 1 }}\n"
    '{{- if eq .Role "user" }}<start_of_turn>user\n'
    "{{- if (and (not $systemPromptAdded) $.System) }}\n"
    "{{- $systemPromptAdded = true }}\n"
    "{{ $.System }}\n"
    "{{ end }}\n"
    "{{ .Content }}<end_of_turn>\n"
    "{{ if $last }}<start_of_turn>model\n"
    "{{ end }}\n"
    '{{- else if eq .Role "assistant" }}<start_of_turn>model\n'
    "{{ .Content }}{{ if not $last }}<end_of_turn>\n"
    "{{ end }}\n"
    "{{- end }}\n"
    "{{- end }}"
)


def _gemma(system: str, messages: Sequence[Message]) -> list[Segment]:
    """GEMMA3_270M_TEMPLATE, executed: user and model turns only; a last model message is
    left open (the model continues it), a last user message opens the model's turn."""
    segments: list[Segment] = []
    system_added = False
    for i, m in enumerate(messages):
        last = i == len(messages) - 1
        if m.role == "user":
            segments.append(Segment("<start_of_turn>user\n", True))
            if not system_added and system:
                system_added = True
                segments.append(Segment(system + "\n\n", False))
            segments += [Segment(m.content, False), Segment("<end_of_turn>\n", True)]
            if last:
                segments.append(Segment("<start_of_turn>model\n", True))
        elif m.role == "assistant":
            segments += [Segment("<start_of_turn>model\n", True), Segment(m.content, False)]
            if not last:
                segments.append(Segment("<end_of_turn>\n", True))
    return segments


def _chatml(messages: Sequence[Message]) -> list[Segment]:
    # SmolLM2's GGUF template: ChatML with a default system prompt when none is given.
    # (Ollama's library smollm2 template differs in its system turn; nothing here relies on it.)
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
        return GEMMA3_270M_TEMPLATE
    return (
        '{{- if not (and .Messages (eq (index .Messages 0).Role "system")) }}<|im_start|>system\n'
        + SMOLLM2_DEFAULT_SYSTEM
        + "<|im_end|>\n{{ end }}"
        "{{- range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n{{ end }}"
        "<|im_start|>assistant\n"
    )
