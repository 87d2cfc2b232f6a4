"""Page scripts that save a file the server made and pick a file to send it, with no file
stored on the server and none of Gradio's upload route (which this app refuses:
ui/web/request_limits.py).

Why not `gr.DownloadButton`: its click downloads the value the button already has, then
runs the event (gradio 6.31 js/downloadbutton, `DownloadButton.svelte`: `on_click()` and then
an `<a download>` of `value.url`), so a file made on click needs a second click, and each
one would be written to Gradio's cache (memory on Cloud Run). Here the event's output is the
file's text, and `SAVE_FILE_JS` saves it from a Blob in the browser.
"""

from __future__ import annotations

import json

# Input: {"name", "mime", "text"} (or null: nothing to save). Output: null, so the page
# does not keep a copy of the file in its state.
SAVE_FILE_JS = """
(file) => {
  if (!file || typeof file.text !== 'string') return null;
  const url = URL.createObjectURL(new Blob([file.text], {type: file.mime}));
  const link = document.createElement('a');
  link.href = url;
  link.download = file.name;
  document.body.appendChild(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 60000);
  return null;
}
"""


def pick_file_js(limit_bytes: int, accept: str) -> str:
    """A script that opens the browser's file picker and gives the event
    {"name", "size", "data_url"} (the bytes base64-encoded, so the request is 4/3 of the
    file with no JSON escaping), or null when nothing was picked. A file over `limit_bytes`
    is not read: its name and size go alone, and the server says it is too large."""
    return f"""
() => new Promise((resolve) => {{
  const input = document.createElement('input');
  input.type = 'file';
  input.accept = {json.dumps(accept)};
  input.addEventListener('cancel', () => resolve([null]));
  input.addEventListener('change', () => {{
    const file = input.files && input.files[0];
    if (!file) {{ resolve([null]); return; }}
    const picked = {{name: file.name.slice(0, 200), size: file.size, data_url: null}};
    if (file.size > {int(limit_bytes)}) {{ resolve([picked]); return; }}
    const reader = new FileReader();
    reader.onload = () => resolve([{{...picked, data_url: String(reader.result)}}]);
    reader.onerror = () => resolve([{{...picked, size: -1}}]);
    reader.readAsDataURL(file);
  }});
  input.click();
}})
"""
