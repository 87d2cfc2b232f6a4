"""How the pages draw things: banners, column headers and status lines, CSS, browser JS.

Pure functions from data to HTML (no Gradio import), shared by every page so that no page
imports another. The pipeline (ui/turn/) says what happened, as data; this module and
ui/view/notes.py (the notes under replies) say how it looks; the pages put it into their
components. No other module makes HTML.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from string import Template

from catalog import find
from ui.backend_access.labels import display_name, label_for
from ui.backend_access.status import StatusView, reply_cost_text
from ui.compat.gradio_internals import GRADIO_DOM  # the $NAMES in CSS and NOTE_TOGGLE_JS
from ui.share.format import SharedConversation
from ui.turn.fair_slots import SlotWait
from ui.turn.figures import ReplyCost, ReplyFigures
from ui.turn.reply import ColumnView, Waiting
from ui.turn.warming import WarmingStatus

# Run in the browser: copy the chat into the BrowserState and back (no server round trip).
# A js function's returned array is read as one value per output, hence the extra [...].
SAVE_HISTORY_JS = "(history) => [history]"
RESTORE_HISTORY_JS = "(saved) => [Array.isArray(saved) ? saved : []]"

# Gradio's Chatbot draws a note (a message with a metadata title: the figures under a reply,
# error notes) as a `div role=button tabindex=0` title, its disclosure toggle, holding an
# icon button with an empty name (axe: nested-interactive, button-name; a screen reader
# meets two controls, one unnamed). The title is the toggle (click, Enter), so the icon is
# made what it looks like, the title's arrow: taken out of the tab order and out of the
# roles (disabled, role=none; CSS lets clicks on it through to the title), and the title says
# whether it is open (aria-expanded). Run once at page load; notes streamed in later are
# repaired as they appear. See README.md, "Accessibility".
NOTE_TOGGLE_JS = Template("""() => {
  const repair = () => {
    for (const title of document.querySelectorAll('$NOTE_TITLE[role="button"]')) {
      const arrow = title.querySelector('$NOTE_ARROW_BUTTON');
      if (arrow && !arrow.disabled) {
        arrow.disabled = true;
        arrow.setAttribute('role', 'none');
        // ARIA attributes would give the role back (an empty aria-label counts).
        arrow.removeAttribute('aria-label');
        arrow.removeAttribute('aria-haspopup');
      }
      const open = String(title.classList.contains('$NOTE_OPEN_CLASS'));
      if (title.getAttribute('aria-expanded') !== open) title.setAttribute('aria-expanded', open);
    }
  };
  let queued = false;
  new MutationObserver(() => {
    if (!queued) {
      queued = true;
      requestAnimationFrame(() => { queued = false; repair(); });
    }
  }).observe(document.body, { subtree: true, childList: true, attributes: true,
                              attributeFilter: ['class'] });
  repair();
}""").substitute(GRADIO_DOM)


def banner_html(text: str, kind: str = "info") -> str:
    """A one-line banner above a page's content (kind: info, warning, error); ui/view/a11y.py
    speaks it (an error assertively)."""
    return f'<div class="chat-banner chat-banner-{kind}">{html.escape(text)}</div>'


def notice_html(notices: Sequence[str]) -> str:
    """Notices (e.g. a deep link's values that were not used) as one warning line for a
    banner slot ("" when there are none)."""
    if not notices:
        return ""
    text = " ".join(notices)
    return (
        f'<div class="chat-banner chat-banner-warning deep-link-notice">{html.escape(text)}</div>'
    )


# The page for a link too long to be one of this app's (ui/web/request_limits.py: 414).
TOO_LONG_PAGE = (
    "<!doctype html><meta charset=utf-8><title>Link too long</title>"
    "<p>This link is too long to be a link of this app (a share link may have been cut "
    "or changed). <a href='/'>Open the app</a></p>\n"
)


# === waiting: the warming banner and the slot wait =======================================
QUEUED_ONCE = "Your message is queued and will be sent once; no need to press again."


def warming_text(status: WarmingStatus) -> str:
    """The phase of a cold start in words (the banner's first part)."""
    if status.phase == "starting":
        return "Starting a GPU instance (the backend was scaled to zero)"
    if status.phase == "loading":
        return f"Loading {display_name(status.model)} into GPU memory"
    wait = f" in {status.retry_in:.0f} s" if status.retry_in else ""
    if status.phase == "busy":
        return f"All GPU instances are busy, retrying{wait}"
    if status.phase == "unreachable":
        return f"The model backend does not answer (connection refused), retrying{wait}"
    return "Ready"


def warming_html(status: WarmingStatus) -> str:
    """The warming banner: phase, elapsed seconds, typical duration."""
    if status.phase == "ready":
        return ""
    pct = min(100, int(100 * status.elapsed / max(status.typical, 1)))
    over = status.elapsed > status.typical
    typical = (
        f"taking longer than the usual ~{status.typical:.0f} s"
        if over
        else f"usually ~{status.typical:.0f} s"
    )
    return (
        f'<div class="warming-banner" data-phase="{status.phase}">'
        f'<span class="warming-phase">{html.escape(warming_text(status))}…</span> '
        f'<span class="warming-elapsed">{status.elapsed:.0f} s</span> '
        f'<span class="warming-typical">({typical})</span>'
        f'<div class="warming-bar"><div style="width:{pct}%"></div></div>'
        f"<small>{QUEUED_ONCE}</small></div>"
    )


def slot_wait_html(wait: SlotWait) -> str:
    """A reply waits for one of its model's slots (ui/turn/fair_slots.py)."""
    if not wait.waiting:
        return ""
    # No live-region role here: the page's persistent live region says it (ui/view/a11y.py),
    # as for the warming banner; a role on this replaced element would say it twice.
    return (
        f'<div class="warming-banner" data-phase="queued">'
        f'<span class="warming-phase">Waiting for {html.escape(wait.model)}: its '
        f"{wait.capacity} slots are busy ({wait.waiting} replies waiting, people served "
        f"in turn)…</span><small>{QUEUED_ONCE}</small></div>"
    )


def waiting_html(waiting: Waiting | None) -> str:
    """Why a reply has no token yet, as a banner ("" when there is nothing to say)."""
    if waiting is None:
        return ""
    if isinstance(waiting, SlotWait):
        return slot_wait_html(waiting)
    return warming_html(waiting)


# === the backend status line above every page (ui/pages/status_bar.py) ========================
def backend_status_html(
    view: StatusView, *, provisional_pickers: bool | None = None, refill: bool = False
) -> str:
    """The status line. Not a live region itself: it is replaced on every refresh and
    counts seconds; the page script (ui/view/a11y.py) speaks its changes of phase through
    the page's live regions (politely; assertively when the backend cannot be used).
    `provisional_pickers`: the page's pickers still hold a provisional list (it polls
    fast meanwhile); None leaves the attribute out. `refill`: the backend's real list is
    known now, so the page's script asks for it (ui/pages/status_bar.py)."""
    detail = (
        f' <span class="backend-status-detail">{html.escape(view.detail)}</span>'
        if view.detail
        else ""
    )
    pickers = (
        f'data-provisional-pickers="{str(provisional_pickers).lower()}" '
        if provisional_pickers is not None
        else ""
    ) + ('data-pickers-refill="true" ' if refill else "")
    return (
        f'<div {pickers}class="backend-status backend-status-{view.state}" '
        f'data-state="{view.state}" data-settled="{str(view.settled).lower()}">'
        f'<span class="backend-status-text">{html.escape(view.text)}</span>{detail}</div>'
    )


# === the columns of Compare, Battle and shared views =====================================
def status_html(text: str, kind: str) -> str:
    return f'<div class="compare-status compare-status-{kind}">{html.escape(text)}</div>'


WAITING_HTML = status_html("Waiting for the first token…", "wait")
ANSWERING_HTML = status_html("Answering…", "wait")
DONE_HTML = status_html("Done", "wait")


def figures_html(figures: ReplyFigures, cost: ReplyCost | None = None) -> str:
    """The status line under a finished reply: first token, speed, tokens, load time."""
    parts = []
    if figures.ttft_s is not None:
        parts.append(f"{figures.ttft_s:.2f} s to first token")
    if figures.tokens_per_s is not None:
        parts.append(f"{figures.tokens_per_s:.1f} tokens/s")
    if figures.eval_count is not None:
        parts.append(f"{figures.eval_count} token{'' if figures.eval_count == 1 else 's'}")
    if figures.model_loaded and figures.load_s is not None:
        parts.append(f"model load {figures.load_s:.2f} s")
    else:
        parts.append("model already loaded")
    parts.append(f"{figures.total_s or 0.0:.2f} s total")
    if figures.done_reason == "length":
        parts.append("max tokens reached")
    if cost is not None:
        parts.append(reply_cost_text(cost.price, cost.seconds))
    return status_html(" · ".join(parts), "stats")


def column_status_html(view: ColumnView) -> str:
    """A column's status slot: the warming banner, progress, then figures or what ended
    the reply (a blind reply shows "Done": its figures would hint at the model)."""
    if view.waiting is not None:
        return waiting_html(view.waiting)
    if view.phase == "failed":
        return status_html(view.error or "", "error")
    if view.phase == "stopped":
        return status_html("Stopped", "stopped")
    if view.phase == "done":
        return figures_html(view.figures, view.cost) if view.figures is not None else DONE_HTML
    return ANSWERING_HTML if view.phase == "answering" else WAITING_HTML


def column_head_html(tag: str | None) -> str:
    """A column's header: the model's name, family and size."""
    if not tag:
        return '<div class="compare-head"><span class="compare-name">—</span></div>'
    label = label_for(tag)
    meta = [label.family_label]
    if label.parameter_size:
        meta.append(label.parameter_size)
    if not label.chat_tuned:
        meta.append("base model")
    return (
        f'<div class="compare-head"><span class="compare-name">'
        f"{html.escape(label.display_name)}</span>"
        f'<span class="compare-meta">{html.escape(" · ".join(meta))}</span></div>'
    )


def blind_head_html(label: str, revealed: str | None = None) -> str:
    """A battle column's header: "Model A", and the model's name after the vote."""
    name = f'<span class="compare-name">{html.escape(label)}</span>'
    extra = (
        f'<span class="compare-meta">{html.escape(revealed)}</span>' if revealed is not None else ""
    )
    return f'<div class="compare-head">{name}{extra}</div>'


CSS = Template("""
/* Banner slots take no space while they are empty. */
#chat-banner:has($PROSE:empty) { display: none; }
.chat-banner { padding: 8px 12px; border-radius: 8px; margin-bottom: 4px; font-size: 0.95em; }
.chat-banner-info { background: var(--color-accent-soft); }
.chat-banner-warning { background: #fff4ce; color: #5c4400; }
.chat-banner-error { background: #fde7e9; color: #7a1020; }
#model-info { font-size: 0.9em; opacity: 0.85; }
/* The backend status line (ui/pages/status_bar.py); its refresh button is clicked by a script. */
#backend-status-refresh, #backend-pickers-refill { display: none !important; }
.backend-status { padding: 4px 10px; border-radius: 8px; font-size: 0.9em;
  background: var(--color-accent-soft); }
.backend-status-starting, .backend-status-loading { background: #fff4ce; color: #5c4400; }
.backend-status-unreachable { background: #fde7e9; color: #7a1020; }
.backend-status-detail { opacity: 0.8; }
/* Boxes with their own light background keep their dark text in the dark theme too (Gradio's
   dark prose colour on a light box is unreadable). */
.backend-status-starting *, .backend-status-loading *, .backend-status-unreachable *,
.chat-banner-warning *, .chat-banner-error *, .compare-status-stopped *,
.compare-status-error *, .warming-banner * { color: inherit; }
/* A note's arrow is part of its title's toggle (NOTE_TOGGLE_JS): clicks go to the title. */
$NOTE_TITLE $NOTE_ARROW_BUTTON { pointer-events: none; }
#composer { align-items: stretch; }

#compare-banner:has($PROSE:empty), #battle-banner:has($PROSE:empty) { display: none; }
.compare-columns { flex-wrap: wrap; }
/* A column's own "clear" icon would reset one model's side only; "Clear" resets all. */
.compare-columns $CHATBOT_CLEAR_BUTTON { display: none; }
.compare-head { display: flex; gap: 8px; align-items: baseline; flex-wrap: wrap;
  padding: 2px 4px; }
.compare-name { font-weight: 600; font-size: 1.05em; }
.compare-meta { opacity: 0.75; font-size: 0.9em; }
.compare-status { font-size: 0.9em; padding: 4px 8px; border-radius: 6px; min-height: 1.6em; }
.compare-status-wait { opacity: 0.7; }
.compare-status-stats { background: var(--color-accent-soft); }
.compare-status-stopped { background: #fff4ce; color: #5c4400; }
.compare-status-error { background: #fde7e9; color: #7a1020; }
.warming-banner { padding: 6px 10px; border-radius: 8px; background: #fff4ce;
  color: #5c4400; font-size: 0.9em; }
.warming-bar { height: 4px; background: rgba(0,0,0,0.1); border-radius: 2px; margin: 4px 0; }
.warming-bar > div { height: 100%; background: #c08a00; border-radius: 2px; }

/* Accessibility (ui/view/a11y.py). The live regions are heard, not seen. */
#a11y-live { position: absolute !important; width: 1px !important; height: 1px !important;
  overflow: hidden !important; clip-path: inset(50%); white-space: nowrap;
  margin: -1px !important; padding: 0 !important; border: 0 !important; }
/* A clear keyboard focus on every control (WCAG 2.4.7), 3:1 against the page in both
   themes; Chromium's default ring is faint on the Soft theme's tinted buttons. */
.gradio-container :is(button, a, input, textarea, select, summary, [tabindex]):focus-visible {
  outline: 3px solid #1d4ed8 !important; outline-offset: 2px !important; }
.dark :is(button, a, input, textarea, select, summary, [tabindex]):focus-visible {
  outline-color: #93c5fd !important; }
/* The accent colour (the selected tab's name among others) has no dark variant in the theme
   (ui/app.py accessible_theme: #4f46e5, 6.3:1 on white): on the dark background the lighter
   #818cf8 (6.5:1 or more). */
.dark { --color-accent: var(--primary-400); }
/* Phones: the model picker above the conversation (its other settings below it), and a
   chat short enough that the message box shows too; Compare and Battle stack their
   columns, each short enough that the next one starts on the same screen. */
@media (max-width: 640px) {
  #chat-layout { flex-direction: column; }
  #chat-side, #chat-side > $FORM { display: contents; }
  #chat-side > *, #chat-side > $FORM > * { order: 1; }
  #chat-side > $FORM > #model { order: -1; }
  #chatbot { height: 42vh !important; }
  .compare-columns > $COLUMN { min-width: 100% !important; }
  #compare-columns [id^="compare-chat-"], #battle-columns [id^="battle-chat-"],
  #shared-columns [id^="shared-chat-"] { height: 36vh !important; }
}

#share-notice:has($PROSE:empty), #compare-share-notice:has($PROSE:empty),
#chat-share-notice:has($PROSE:empty) { display: none; }
.shared-summary { padding: 8px 12px; border-radius: 8px; background: var(--color-accent-soft);
  margin-bottom: 6px; }
.shared-summary .shared-params { font-size: 0.9em; opacity: 0.85; }
.shared-summary pre { white-space: pre-wrap; margin: 4px 0; font-size: 0.9em; }
""").substitute(GRADIO_DOM)


def model_info_markdown(tag: str | None) -> str:
    """What the chat shows under its model picker."""
    if not tag:
        return ""
    spec = find(tag)
    if spec is None:
        return f"`{tag}`"
    return f"**{spec.display_name}** · {spec.quantization}  \n{spec.description}"


# A link holds what the sharer's browser sent: the messages, replies and figures are theirs
# to write, so the page says so (a made-up reply must not pass for this app's word). Only
# replies whose MAC verifies (ui/share/reply_mac.py) are marked as generated here.
SHARED_CONTENT_ORIGIN = (
    "Everything below was supplied by whoever shared this link. Replies marked "
    "“✓ Generated here” were generated by this site as shown (model, text and figures, "
    "in answer to the message above them and this system prompt); the others may have "
    "been written or edited by the sharer."
)


def summary_html(conv: SharedConversation) -> str:
    names = [column.label for column in conv.columns]
    what = (
        f"Shared chat with {names[0]}"
        if conv.kind == "chat"
        else f"Shared comparison of {', '.join(names)}"
    )
    created = conv.created_at.strftime("%Y-%m-%d %H:%M UTC")
    p = conv.parameters
    params = []
    if p.temperature is not None:
        params.append(f"temperature {p.temperature:g}")
    if p.top_p is not None:
        params.append(f"top-p {p.top_p:g}")
    if p.max_tokens is not None:
        params.append(f"max tokens {p.max_tokens}")
    system = (
        f"<div>System prompt:</div><pre>{html.escape(p.system_prompt)}</pre>"
        if p.system_prompt
        else "<div class='shared-params'>No system prompt.</div>"
    )
    return (
        '<div class="shared-summary">'
        f"<div><strong>{html.escape(what)}</strong> · created {html.escape(created)} · "
        "read-only</div>"
        f"<div class='shared-origin'>{html.escape(SHARED_CONTENT_ORIGIN)}</div>"
        f'<div class="shared-params">{html.escape(" · ".join(params) or "default parameters")}'
        f"</div>{system}</div>"
    )
