"""Deep links: query parameters that preselect models and prefill the prompt.

    ?model=smollm2:135m             the Chat tab with this model picked
    ?compare=gemma3:270m,smollm2:135m   the Compare tab with these 2-3 models
    ?q=Hello                        the prompt box prefilled (Compare's box if ?compare=)
    ?share=TOKEN                    a shared chat or comparison (see ui/pages/share.py)

Links are user input: a bad value is ignored and a notice says so; it never makes the page
fail. The page's query string reaches the server with each event (Gradio's client sends
`window.location.search` along), so the load handlers read it from `gr.Request`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from catalog import normalize_tag

PARAM_MODEL = "model"
PARAM_COMPARE = "compare"
PARAM_PROMPT = "q"
PARAM_SHARE = "share"

MIN_COMPARE_MODELS = 2
MAX_COMPARE_MODELS = 3
MAX_LINK_VALUE_CHARS = 500  # longer model values are not model names; not worth echoing
_MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/@+-]{0,199}")

# Tab ids (app.py gives each Tab the same id).
TAB_CHAT = "chat"
TAB_COMPARE = "compare"
TAB_SHARED = "shared"


def query_params(request: Any) -> dict[str, str]:
    """The page's query parameters from a `gr.Request` (empty when there is none)."""
    if request is None:
        return {}
    try:
        params = dict(request.query_params)
    except (AttributeError, TypeError, ValueError):
        return {}
    return {str(k): str(v) for k, v in params.items() if isinstance(v, str | int | float)}


def clip(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def initial_tab(params: Mapping[str, str]) -> str | None:
    """Which tab a link opens (None: the default tab)."""
    if params.get(PARAM_SHARE, "").strip():
        return TAB_SHARED
    if params.get(PARAM_COMPARE, "").strip():
        return TAB_COMPARE
    return None


@dataclass(frozen=True)
class LinkChoice:
    """What a link asks for, reduced to what is valid, plus notices about the rest."""

    models: list[str] = field(default_factory=list)
    prompt: str | None = None
    notices: list[str] = field(default_factory=list)


def match_models(requested: Sequence[str], offered: Sequence[str]) -> tuple[list[str], list[str]]:
    """(the requested models that are offered, in the offered spelling, without duplicates;
    notices about the others)."""
    by_tag = {normalize_tag(tag): tag for tag in offered}
    found: list[str] = []
    notices: list[str] = []
    for raw in requested:
        name = raw.strip()
        if not name:
            continue
        if len(name) > MAX_LINK_VALUE_CHARS or not _MODEL_NAME.fullmatch(name):
            notices.append(f"The link names “{clip(name)}”, which is not a model name; ignored.")
            continue
        tag = by_tag.get(normalize_tag(name))
        if tag is None:
            available = ", ".join(offered) if offered else "none right now"
            notices.append(
                f"The link asks for the model “{clip(name)}”, which is not available here "
                f"(available: {available}); ignored."
            )
        elif tag in found:
            notices.append(f"The link names “{clip(name)}” twice; it is used once.")
        else:
            found.append(tag)
    return found, notices


def link_prompt(params: Mapping[str, str], max_chars: int) -> tuple[str | None, list[str]]:
    """The ?q= prompt, or None (with a notice when it is too long to use)."""
    prompt = params.get(PARAM_PROMPT)
    if prompt is None or not prompt.strip():
        return None, []
    if len(prompt) > max_chars:
        return None, [
            f"The prompt in the link is {len(prompt):,} characters long; the limit is "
            f"{max_chars:,}, so it was not filled in."
        ]
    return prompt, []


def chat_link(params: Mapping[str, str], offered: Sequence[str], max_chars: int) -> LinkChoice:
    """The Chat tab's part of a link: ?model= and (without ?compare=) ?q=."""
    notices: list[str] = []
    models: list[str] = []
    raw_model = params.get(PARAM_MODEL)
    if raw_model is not None and raw_model.strip():
        models, notices = match_models([raw_model], offered)
    prompt = None
    if not params.get(PARAM_COMPARE, "").strip():
        prompt, prompt_notices = link_prompt(params, max_chars)
        notices += prompt_notices
    return LinkChoice(models[:1], prompt, notices)


def compare_link(
    params: Mapping[str, str],
    offered: Sequence[str],
    defaults: Sequence[str],
    max_chars: int,
) -> LinkChoice | None:
    """The Compare tab's part of a link (?compare= and ?q=); None without ?compare=.

    Unknown models are dropped with a notice; if fewer than two remain, the defaults fill
    the gap; more than three are cut to the first three.
    """
    raw = params.get(PARAM_COMPARE)
    if raw is None or not raw.strip():
        return None
    models, notices = match_models(raw.split(","), offered)
    if len(models) > MAX_COMPARE_MODELS:
        dropped = models[MAX_COMPARE_MODELS:]
        models = models[:MAX_COMPARE_MODELS]
        notices.append(
            f"A comparison has at most {MAX_COMPARE_MODELS} models; {', '.join(dropped)} left out."
        )
    if len(models) < MIN_COMPARE_MODELS:
        for tag in defaults:
            if len(models) >= MIN_COMPARE_MODELS:
                break
            if tag not in models:
                models.append(tag)
        notices.append(
            f"A comparison needs at least {MIN_COMPARE_MODELS} models: "
            f"compared with {', '.join(models)} instead."
        )
    prompt, prompt_notices = link_prompt(params, max_chars)
    return LinkChoice(models, prompt, notices + prompt_notices)
