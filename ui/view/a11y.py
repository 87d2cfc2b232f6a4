"""What screen-reader and keyboard users get on every page: spoken updates, button names,
Escape to stop, focus back in the message box.

    layout_live_regions()                   # in ui/app.py, once, before the pages
    demo.load(fn=None, js=A11Y_JS)          # the page script below, once per page load
    event.then(**announce_reply_end("chat", [chatbot, model]))    # per streaming event

Live regions: a screen reader speaks a live region's changes only if the region was in the
page before they happened (MDN, "ARIA live regions": "start with an empty live region, then
- in a separate step - change the content"; role=alert is the inconsistent exception,
w3c/aria#1216). The pages' own status HTML (the backend status line, the warming
banners, the page banners) is replaced wholesale on every update, and it changes every
second while a cold start counts up. So two empty, visually hidden regions are laid out with
the page (`#a11y-polite`, role=status; `#a11y-assertive`, role=alert), and the page script
copies into them what a sighted user sees change: the backend status when its phase or
model changes (not its counters; an unusable backend assertively), a warming banner when it
appears or changes phase, a page banner's message (errors assertively). The end of a reply
is said once per turn, from the event's own `.then` (Chat: "Reply from <model> finished:
N tokens in X s"; Compare and Battle: one sentence for all columns).

Keyboard: Enter sends and Shift+Enter adds a line (Gradio's Textbox with max_lines > 1);
Escape stops the reply streaming on the visible tab (it presses that tab's Stop, which
does nothing when no reply runs); pressing a Send button puts the focus back in the
message box (not after a tap: a phone's on-screen keyboard would cover the reply); Share
link also copies the link (`COPY_SHARE_LINK_JS`). Focus outlines and the phone layout are
CSS (ui/view/render.py).
"""

from __future__ import annotations

import json
from typing import Any, Literal

import gradio as gr

POLITE_ID = "a11y-polite"
ASSERTIVE_ID = "a11y-assertive"
ANNOUNCEMENTS_KEPT = 10  # older spoken lines are dropped from the hidden regions

# Names that say what a button does (the visible text stays, and starts each name, so
# speech-input users can still say what they see: WCAG 2.5.3 "Label in Name").
ACCESSIBLE_NAMES: dict[str, str] = {
    "#stop": "Stop the reply",
    "#compare-stop": "Stop the answers",
    "#battle-stop": "Stop both answers",
    "#chatbot button[aria-label='Retry']": "Retry the last message",
    "#chat-share": "Share link: copy a link to this chat",
    "#compare-share": "Share link: copy a link to this comparison",
    "#compare-clear": "Clear the answers",
    "#vote-a": "Vote: A is better (the first answer)",
    "#vote-b": "Vote: B is better (the second answer)",
    "#vote-tie": "Vote: Tie, both answers are as good",
    "#vote-both-bad": "Vote: Both are bad",
}

# Escape presses the Stop of whichever page is showing; Send gives the focus back to its box.
STOP_BUTTONS = ["stop", "compare-stop", "battle-stop"]
MESSAGE_BOXES = {
    "send": "#message textarea",
    "compare-send": "#compare-message textarea",
    "battle-send": "#battle-message textarea",
}

# Where banners show: each page's banner above its content, each column's status slot (a
# column's warming banner), the share and export notices. Spoken when they appear or change.
BANNER_SLOTS = (
    '[id$="-banner"], [id^="compare-status-"], [id^="battle-status-"], [id$="-share-notice"], '
    '[id$="-export-notice"]'
)

LIVE_REGIONS_HTML = (
    f'<div id="{POLITE_ID}" role="status" aria-live="polite"></div>'
    f'<div id="{ASSERTIVE_ID}" role="alert" aria-live="assertive"></div>'
)


def layout_live_regions() -> gr.HTML:
    """The two hidden live regions, in the page from its first render (never updated by
    Gradio: only the page script writes into them)."""
    return gr.HTML(LIVE_REGIONS_HTML, elem_id="a11y-live", padding=False)


A11Y_JS = f"""
() => {{
  if (window.__a11y) return;
  const KEPT = {ANNOUNCEMENTS_KEPT};
  const NAMES = {json.dumps(ACCESSIBLE_NAMES)};
  const STOPS = {json.dumps(STOP_BUTTONS)};
  const BOXES = {json.dumps(MESSAGE_BOXES)};
  const SLOTS = {json.dumps(BANNER_SLOTS)};
  // A new line in a region that is already in the page: spoken once, even if the same
  // words were said before (a region whose text is merely set again says nothing).
  const announce = (text, urgent) => {{
    const region = document.getElementById(urgent ? '{ASSERTIVE_ID}' : '{POLITE_ID}');
    text = (text || '').replace(/\\s+/g, ' ').trim();
    if (!region || !text) return;
    const line = document.createElement('p');
    line.textContent = text;
    region.appendChild(line);
    while (region.childElementCount > KEPT) region.firstElementChild.remove();
  }};
  const textOf = (el, selector) => {{
    const part = el && (selector ? el.querySelector(selector) : el);
    return part ? part.textContent.replace(/\\s+/g, ' ').trim() : '';
  }};
  // Counters ("… 12 s", "retrying in 5 s") change every second; the phase is what is
  // worth saying.
  const withoutCounter = (text) => text.replace(/…$/, '')
    .replace(/(retrying|trying again) in \\d+ s/gi, '$1 shortly')
    .replace(/…?\\s*\\d+ s$/, '').trim();
  const visible = (el) => !!(el && el.offsetParent !== null);
  const seen = {{}};  // what was last said per source, so each change is said once
  const sayOnChange = (key, text, urgent, quiet) => {{
    if (seen[key] === text) return;
    seen[key] = text;
    if (!quiet) announce(text, urgent);
  }};
  const check = () => {{
    for (const [selector, name] of Object.entries(NAMES)) {{
      for (const el of document.querySelectorAll(selector)) {{
        if (el.getAttribute('aria-label') !== name) el.setAttribute('aria-label', name);
      }}
    }}
    const said = new Set();
    for (const slot of document.querySelectorAll(SLOTS)) {{
      const banner = slot.querySelector('.warming-banner, .chat-banner');
      if (!banner) {{ seen[slot.id] = ''; continue; }}  // said again when it comes back
      const warming = banner.classList.contains('warming-banner');
      const phase = withoutCounter(textOf(banner, '.warming-phase'));
      const text = warming ? `${{phase}} ${{textOf(banner, '.warming-typical')}}` : textOf(banner);
      const twice = said.has(text);  // two columns in one phase: said once
      said.add(text);
      sayOnChange(slot.id, text, banner.classList.contains('chat-banner-error'), twice);
    }}
    const line = document.querySelector('#backend-status .backend-status');
    if (line && line.dataset.state !== 'unknown') {{
      const urgent = line.dataset.state === 'unreachable';
      let text = withoutCounter(textOf(line, '.backend-status-text'));
      if (urgent) text = withoutCounter(`${{text}} ${{textOf(line, '.backend-status-detail')}}`);
      // Not said: the state at page load (it is read with the page) unless the backend
      // cannot be used, and a phase a warming banner has just said.
      const quiet = (!('status' in seen) && !urgent)
        || [...said].some((banner) => banner.startsWith(text));
      sayOnChange('status', text, urgent, quiet);
    }}
  }};
  let pending = false;
  const soon = () => {{
    if (pending) return;
    pending = true;
    setTimeout(() => {{ pending = false; check(); }}, 250);
  }};
  new MutationObserver(soon).observe(document.body, {{
    subtree: true, childList: true, characterData: true, attributes: true,
    attributeFilter: ['data-state', 'data-phase', 'class'],
  }});
  check();
  document.addEventListener('keydown', (event) => {{
    if (event.key !== 'Escape' || event.defaultPrevented) return;
    // Escape in an open dropdown closes the list; it does not stop a reply.
    if (event.target.closest && event.target.closest('[aria-expanded="true"]')) return;
    const stop = STOPS.map((id) => document.getElementById(id)).find(visible);
    if (stop) stop.click();
  }});
  document.addEventListener('click', (event) => {{
    const button = event.target.closest && event.target.closest('button[id]');
    const box = button && BOXES[button.id];
    // Not after a tap: on a phone the on-screen keyboard would cover the reply.
    if (box && event.pointerType !== 'touch') {{
      setTimeout(() => document.querySelector(box)?.focus(), 0);
    }}
  }});
  window.__a11y = {{ announce }};
}}
"""

# Runs in the browser after a streaming event ends, with the event's values: says once how
# the turn ended. `last` remembers the last turn said, so an event that changed nothing (a
# rejected message) says nothing again.
_CHAT_END_JS = """
(history, model) => {
  const a11y = window.__a11y;
  if (!a11y || !Array.isArray(history)) return [];
  const text = (m) => (typeof m.content === 'string' ? m.content
    : (m.content || []).map((p) => (p && p.text) || '').join(''));
  const note = history.length ? history[history.length - 1] : null;
  const title = note && note.metadata && note.metadata.title;
  const key = `${history.length}|${title}`;
  const last = (window.__a11yLastReply = window.__a11yLastReply || {});
  if (!title || last.chat === key) return [];
  last.chat = key;
  const name = typeof model === 'string' && model ? model : 'the model';
  const total = /([\\d.]+) s total/.exec(title);
  const tokens = /(\\d+) tokens? generated/.exec(text(note));
  if (title.startsWith('Stopped')) {
    a11y.announce(`Reply from ${name} stopped${total ? ` after ${total[1]} s` : ''}.`);
  } else if (total) {
    const count = tokens ? `${tokens[1]} token${tokens[1] === '1' ? '' : 's'}` : 'done';
    a11y.announce(`Reply from ${name} finished: ${count} in ${total[1]} s.`);
  } else {
    a11y.announce(`Reply from ${name} failed: ${title.replace(/^\\W+/, '')}`, true);
  }
  return [];
}
"""

# The same for Compare and Battle: one sentence for all columns. Inputs: the column heads'
# HTML, then the column statuses' HTML; __PAGE__ is the page's name.
_COLUMNS_END_JS = """
(...values) => {
  const a11y = window.__a11y;
  if (!a11y) return [];
  const parse = (html) => new DOMParser().parseFromString(html || '', 'text/html').body;
  const plain = (el) => (el ? el.textContent.replace(/\\s+/g, ' ').trim() : '');
  const half = values.length / 2;
  const parts = [];
  let failed = false;
  for (let i = 0; i < half; i++) {
    const name = plain(parse(values[i]).querySelector('.compare-name')) || `Answer ${i + 1}`;
    const status = plain(parse(values[half + i]));
    if (!status) continue;  // an unused column
    const total = /([\\d.]+) s total/.exec(status);
    const tokens = /(\\d+) tokens?(?![\\/\\w])/.exec(status);
    if (status === 'Done') parts.push(`${name} finished`);
    else if (status === 'Stopped') parts.push(`${name} stopped`);
    else if (total) {
      parts.push(`${name} finished: ${tokens ? tokens[1] + ' tokens' : 'done'} in ${total[1]} s`);
    } else {
      parts.push(`${name} failed: ${status}`);
      failed = true;
    }
  }
  const key = parts.join('; ');
  const last = (window.__a11yLastReply = window.__a11yLastReply || {});
  if (!parts.length || last.__PAGE__ === key) return [];
  last.__PAGE__ = key;
  a11y.announce(`Answers ended. ${key}.`, failed);
  return [];
}
"""


# After Share made a link: put it on the clipboard (the link box is a disabled input, which
# a keyboard cannot reach to copy from) and say so. Inputs: the link box.
COPY_SHARE_LINK_JS = """
(link) => {
  const say = (text) => window.__a11y && window.__a11y.announce(text);
  if (typeof link !== 'string' || !link) return [];
  if (!navigator.clipboard) {
    say('The share link is in the box next to the Share link button.');
    return [];
  }
  navigator.clipboard.writeText(link).then(
    () => say('Share link copied to the clipboard.'),
    () => say('The share link is in the box next to the Share link button.'),
  );
  return [];
}
"""


def announce_reply_end(
    page: Literal["chat", "compare", "battle"], inputs: list[Any]
) -> dict[str, Any]:
    """Keyword arguments of a `.then` (browser only, no server round trip) that says once
    how a streaming event's turn ended. Chat: inputs [chatbot, model]. Compare and Battle:
    [*column heads, *column statuses]."""
    js = _CHAT_END_JS if page == "chat" else _COLUMNS_END_JS.replace("__PAGE__", page)
    return {"fn": None, "js": js, "inputs": inputs}
