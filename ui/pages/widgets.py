"""Widgets several pages lay out the same way: the prompt row and the sampling sliders.

Layout only (no handlers); each call creates its components in the current Blocks context.
The bounds and defaults are those the checks use (ui/turn/).
"""

from __future__ import annotations

from typing import Any

import gradio as gr

from ui.settings import Settings
from ui.turn.checks import DEFAULT_TEMPERATURE, TEMPERATURE_RANGE

# Raw HTML tags that Markdown never produces: every Chatbot shows them as text, so a
# message, a reply or a shared link cannot lay a form, a password box, a button or an
# overlay over the app (phishing). Gradio's sanitizer removes only script-running markup;
# a Chatbot's `allow_tags` list makes its renderer escape the listed tags (`<` -> `&lt;`)
# after Markdown and before sanitizing. `img` and `a` stay (Markdown makes them; the CSP
# limits images to this origin, ui/web/security_headers.py); style attributes on them are
# refused by the CSP's `style-src-attr 'none'`.
RAW_HTML_SHOWN_AS_TEXT: list[str] = [
    "applet", "area", "audio", "base", "body", "button", "canvas", "center", "datalist",
    "details", "dialog", "div", "embed", "fieldset", "font", "form", "frame", "frameset",
    "head", "html", "iframe", "input", "label", "legend", "link", "map", "marquee", "math",
    "meta", "noscript", "object", "optgroup", "option", "output", "param", "picture",
    "portal", "script", "select", "slot", "source", "span", "style", "summary", "svg",
    "template", "textarea", "title", "track", "video",
]  # fmt: skip


def prompt_row(prefix: str, placeholder: str) -> tuple[gr.Row, gr.Textbox, gr.Button, gr.Button]:
    """A row with the prompt box, Send and Stop (ids `{prefix}-message`, ...); more buttons
    can be added with `with row:`."""
    with gr.Row(equal_height=True, elem_id=f"{prefix}-composer") as row:
        message = gr.Textbox(
            label="Prompt",
            show_label=False,
            placeholder=placeholder,
            lines=1,
            max_lines=8,
            scale=6,
            elem_id=f"{prefix}-message",
            container=False,
        )
        send = gr.Button("Send", variant="primary", scale=1, min_width=80, elem_id=f"{prefix}-send")
        stop = gr.Button("Stop", variant="stop", scale=1, min_width=80, elem_id=f"{prefix}-stop")
    return row, message, send, stop


def temperature_slider(elem_id: str) -> gr.Slider:
    return gr.Slider(
        *TEMPERATURE_RANGE,
        value=DEFAULT_TEMPERATURE,
        step=0.05,
        label="Temperature",
        elem_id=elem_id,
    )


def max_tokens_slider(settings: Settings, default: int, elem_id: str) -> gr.Slider:
    """Up to the configured limit (LLM_MAX_TOKENS_LIMIT), starting at `default`."""
    return gr.Slider(
        1,
        settings.max_tokens_limit,
        value=min(default, settings.max_tokens_limit),
        step=1,
        label="Max tokens",
        elem_id=elem_id,
    )


def image_input(elem_id: str) -> gr.Image:
    """The image a message may carry (ui/turn/images.py): pick, drop or paste (the
    clipboard button) a PNG, JPEG, WebP or GIF. Hidden until the picked model(s) can see;
    the handlers read its raw upload (`preprocess=False`) and check it themselves."""
    return gr.Image(
        label="Image for the model (PNG, JPEG, WebP, GIF)",
        type="filepath",
        sources=["upload", "clipboard"],
        height=140,
        visible=False,
        elem_id=elem_id,
        buttons=[],
    )


def clear_image_when_sent(message: gr.Textbox, image: gr.Image) -> dict[str, Any]:
    """Keyword arguments of a `.then()` after a send: the image input empties when the
    message went out (the box was cleared) and keeps the image when it was refused (the
    typed text is still there), in the browser with no round trip."""
    return {
        "fn": None,
        "js": "(text, image) => (text === '' ? null : image)",
        "inputs": [message, image],
        "outputs": [image],
    }


def text_api_trigger() -> gr.Button:
    """A never-shown button for a page's text-only API endpoint (`/chat`, `/compare`,
    `/battle`): those keep their inputs, so callers that send exactly them (the queue API
    checks the count) are unchanged, while the page's own Send goes to the endpoint that
    also takes the image (`/chat_with_image`, ...). Nothing in the page clicks it."""
    return gr.Button(visible=False)
