"""Every use of Gradio's internals, in one place: the queue's events, Gradio's reading of a
request's origin, the folder it serves files from, and the DOM the Chatbot and the layout
draw, which our CSS and page scripts select on (ui/view/render.py). None of it is Gradio's
public API, so an upgrade may change any of it without notice; tests/test_compat_gradio.py
pins each one against the Gradio in uv.lock and names what changed.

Gradio is imported only where a function needs it, so that importing the selectors (the
page styles, ui/view/render.py) does not load Gradio.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from starlette.requests import Request

# === the queue (ui/web/event_streams.py) =======================================================


def session_of_queued_event(app: Any, event_id: str) -> str | None:
    """The session of a queued or running event, None if the queue holds no such event.
    `app` is the ASGI scope's "app": Gradio's App, which serves the Blocks and its queue.
    An event sent without a session hash has its own id as its session."""
    event = app.get_blocks()._queue.event_ids_to_events.get(event_id)
    return None if event is None else str(event.session_hash)


# === the request's origin (ui/share/service.py) ==============================================


def request_origin(request: Request, route_path: str) -> str:
    """The app's root URL as the browser reached it, without a trailing slash: Gradio's own
    reading of `request` (X-Forwarded-Host/-Proto behind a proxy), with `route_path` (the
    part of the path after the app's root) cut off."""
    from gradio import route_utils  # Gradio: see the module docstring

    return str(route_utils.get_request_origin(request, route_path))


# === the upload folder (ui/turn/images.py, ui/pages/export.py) ==================================


def upload_folder() -> str:
    """Where Gradio keeps uploads and the files components show (GRADIO_TEMP_DIR, else
    the system's temp folder + "/gradio"): the only place an attached image may come from,
    and where an imported chat's images are written (Gradio refuses a Chatbot file outside it)."""
    from gradio import utils  # Gradio: see the module docstring

    return str(utils.get_upload_folder())


def in_upload_folder(path: str) -> bool:
    """Whether `path` (symbolic links resolved) lies inside Gradio's upload folder."""
    from pathlib import Path

    try:
        return Path(path).resolve().is_relative_to(Path(upload_folder()).resolve())
    except (OSError, ValueError):
        return False


# === the page template's own style attributes (ui/web/security_headers.py) =====================


def page_template_style_attributes() -> list[str]:
    """The `style="..."` values in Gradio's page template (templates/frontend/index.html:
    on <html>, <body> and <gradio-app>), exactly as written, for the CSP's hashes. Read from
    the installed Gradio, so an upgrade that changes them changes the hashes with them."""
    import re
    from importlib.resources import files

    template = files("gradio").joinpath("templates/frontend/index.html").read_text("utf-8")
    return re.findall(r'\sstyle="([^"]*)"', template)


# === the DOM Gradio draws (ui/view/render.py's CSS and NOTE_TOGGLE_JS) ===========================
# A Chatbot note (a message with a metadata title) is a group whose title is a
# `div role=button`, holding the arrow (an icon button); the title has NOTE_OPEN_CLASS while
# the note is open.
NOTE_TITLE = ".thought-group > .title"
NOTE_ARROW_BUTTON = ".arrow button"
NOTE_OPEN_CLASS = "expanded"
# The element holding a gr.HTML's content: empty while the HTML is "".
PROSE = ".prose"
# The box Gradio wraps a column's form components (dropdowns, sliders, boxes) in.
FORM = ".form"
# A gr.Column inside a gr.Row.
COLUMN = ".column"
# The Chatbot's own "clear" icon button.
CHATBOT_CLEAR_BUTTON = 'button[aria-label="Clear"]'

# The selectors by name, for string.Template: `$PROSE` in ui/view/render.py's CSS and scripts.
GRADIO_DOM: dict[str, str] = {
    "NOTE_TITLE": NOTE_TITLE,
    "NOTE_ARROW_BUTTON": NOTE_ARROW_BUTTON,
    "NOTE_OPEN_CLASS": NOTE_OPEN_CLASS,
    "PROSE": PROSE,
    "FORM": FORM,
    "COLUMN": COLUMN,
    "CHATBOT_CLEAR_BUTTON": CHATBOT_CLEAR_BUTTON,
}
