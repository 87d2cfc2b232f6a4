"""The Export controls of the Chat and Compare tabs, and Chat's Import.

The files are made by ui/share/export.py (the JSON schema, Markdown, reading an import back);
this module lays out the buttons and wires their events. A download is one click: the event
returns the file's text and a page script saves it (ui/view/file_scripts.py). An import reads
the file in the browser and sends it in one request (capped: `import_limit_bytes`).

API endpoints:

    /export_chat_markdown, /export_chat_json
            (history, model, system_prompt, temperature, top_p, max_tokens)
            -> ({"name", "mime", "text"} or null, notice)
    /export_compare_markdown, /export_compare_json
            (models, system_prompt, temperature, max_tokens, history_1, history_2, history_3)
            -> (file or null, notice)
    /import_chat  ({"name", "size", "data_url"})
            -> (history, model, system_prompt, temperature, top_p, max_tokens, notice)

A rejected import changes nothing but the notice, which names the problem.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import gradio as gr
from pydantic import ValidationError

from ui.compat.gradio_internals import in_upload_folder, upload_folder
from ui.context import AppContext
from ui.errors import InputRejected
from ui.share.export import (
    EXPORT_FORMAT,
    EXPORT_VERSION,
    MAX_FILE_BYTES,
    ConversationExport,
    ExportedColumn,
    ExportedParameters,
    ImportRejected,
    conversation_text,
    export_file_name,
    export_messages,
    has_user_message,
    import_limit_bytes,
    read_upload,
    to_chatbot,
    to_markdown,
)
from ui.turn.checks import (
    DEFAULT_TOP_P,
    check_history,
    check_model_count,
    check_parameters,
    parse_model_list,
)
from ui.view.file_scripts import SAVE_FILE_JS, pick_file_js
from ui.view.render import banner_html as notice

Format = Literal["markdown", "json"]
MIME = {"markdown": "text/markdown", "json": "application/json"}
SUFFIX = {"markdown": "md", "json": "json"}
NOTHING_TO_EXPORT = "There is nothing to export yet: send a message first."


def read_cached_file(path: str) -> bytes | None:
    """A file part's bytes, only from Gradio's cache (the path comes from the browser)."""
    if not in_upload_folder(path):
        return None
    try:
        with open(path, "rb") as file:
            data = file.read(MAX_FILE_BYTES + 1)
    except OSError:
        return None
    return data if len(data) <= MAX_FILE_BYTES else None


class ExportHandlers:
    def __init__(self, ctx: AppContext) -> None:
        self.ctx = ctx
        self.limit_bytes = import_limit_bytes(ctx.settings.max_request_bytes)

    def _file(
        self, kind: Literal["chat", "compare"], fmt: Format, build: Callable[[list[str]], Any]
    ) -> tuple[Any, str]:
        """(the file for SAVE_FILE_JS, or None; the notice)."""
        left_out: list[str] = []
        try:
            columns, parameters = build(left_out)
        except InputRejected as exc:  # a malformed history or bad parameters
            return None, notice(exc.user_message, "error")
        if not has_user_message(columns):
            return None, notice(NOTHING_TO_EXPORT, "warning")
        now = datetime.now(UTC)
        export = ConversationExport(
            format=EXPORT_FORMAT, version=EXPORT_VERSION, kind=kind,
            exported_at=now, parameters=parameters, columns=columns,
        )  # fmt: skip
        text = export.to_json() if fmt == "json" else to_markdown(export)
        name = export_file_name(kind, now, SUFFIX[fmt])
        said = notice(" ".join(left_out), "warning") if left_out else notice(f"Saved {name}.")
        return {"name": name, "mime": MIME[fmt], "text": text}, said

    def _parameters(
        self, system_prompt: object, temperature: object, top_p: object, max_tokens: object
    ) -> ExportedParameters:
        p = check_parameters(self.ctx, system_prompt, temperature, top_p, max_tokens)
        return ExportedParameters(
            system_prompt=p.system_prompt, temperature=p.options["temperature"],
            top_p=p.options["top_p"], max_tokens=p.max_tokens,
        )  # fmt: skip

    def _column(self, model: object, history: object, left_out: list[str]) -> ExportedColumn:
        if not isinstance(model, str) or not model.strip():
            raise InputRejected("Pick the model of this conversation first.")
        messages = export_messages(history, read_cached_file, left_out)
        try:
            return ExportedColumn(model=model.strip(), messages=messages)
        except ValidationError:
            raise InputRejected(f"“{model[:60]}” is not a model name.") from None

    def chat(self, fmt: Format) -> Callable[..., Any]:
        async def export_chat(
            history: object, model: object, system_prompt: object, temperature: object,
            top_p: object, max_tokens: object,
        ) -> tuple[Any, str]:  # fmt: skip
            def build(left_out: list[str]) -> Any:
                params = self._parameters(system_prompt, temperature, top_p, max_tokens)
                return [self._column(model, history, left_out)], params

            return self._file("chat", fmt, build)

        return export_chat

    def compare(self, fmt: Format) -> Callable[..., Any]:
        async def export_compare(
            models: object, system_prompt: object, temperature: object, max_tokens: object,
            history_1: object, history_2: object, history_3: object,
        ) -> tuple[Any, str]:  # fmt: skip
            def build(left_out: list[str]) -> Any:
                names = parse_model_list(models)
                check_model_count(names)
                # Compare sends the chat's default top-p (it has no top-p control).
                params = self._parameters(system_prompt, temperature, DEFAULT_TOP_P, max_tokens)
                histories = [history_1, history_2, history_3][: len(names)]
                columns = [
                    self._column(n, h, left_out) for n, h in zip(names, histories, strict=True)
                ]
                return columns, params

            return self._file("compare", fmt, build)

        return export_compare

    async def import_chat(self, upload: object) -> tuple[Any, ...]:
        """Restore an exported chat: history, model, system prompt, temperature, top-p,
        max tokens, notice. Anything wrong: only the notice changes."""
        unchanged = (gr.skip(),) * 6
        if upload is None:  # the file picker was closed
            return (*unchanged, gr.skip())
        try:
            name, export = read_upload(upload, self.limit_bytes)
            if export.kind != "chat":
                raise ImportRejected(
                    f"“{name}” is a comparison of {len(export.columns)} models; Chat imports "
                    "a chat export (one model)."
                )
            [column] = export.columns
            model = await self.ctx.models.check(column.model)
            p = export.parameters
            params = check_parameters(
                self.ctx, p.system_prompt, p.temperature, p.top_p, p.max_tokens
            )
            check_history(self.ctx, conversation_text(column), then="This file cannot be imported.")
            history = to_chatbot(column, Path(upload_folder()))
        except InputRejected as exc:  # ImportRejected, ModelRejected, HistoryRejected
            return (*unchanged, notice(exc.user_message, "error"))
        turns = sum(1 for m in history if m["role"] == "user")
        said = f"Imported {name}: {turns} message{'s' if turns != 1 else ''} with {model}."
        if params.notices:
            said += " " + " ".join(params.notices)
        return (
            history, model, params.system_prompt, params.options["temperature"],
            params.options["top_p"], params.max_tokens,
            notice(said, "warning" if params.notices else "info"),
        )  # fmt: skip


# === layout and wiring ===================================================================
@dataclass
class ExportControls:
    markdown: gr.Button
    json: gr.Button
    notice: gr.HTML
    file: gr.JSON  # the file made, on its way to SAVE_FILE_JS (hidden)
    import_button: gr.Button | None = None
    upload: gr.JSON | None = None  # what the file picker read (hidden)


def layout_export(prefix: str, *, importable: bool) -> ExportControls:
    """The "Export and import" menu (ids `{prefix}-export-...`), in the current context."""
    title = "Export and import" if importable else "Export"
    with gr.Accordion(title, open=False, elem_id=f"{prefix}-export"):
        with gr.Row(equal_height=True):
            markdown = gr.Button("Download Markdown", size="sm", elem_id=f"{prefix}-export-md")
            as_json = gr.Button("Download JSON", size="sm", elem_id=f"{prefix}-export-json")
        import_button = (
            gr.Button("Import JSON…", size="sm", elem_id=f"{prefix}-import") if importable else None
        )
        message = gr.HTML("", elem_id=f"{prefix}-export-notice", padding=False)
    file = gr.JSON(None, visible=False)
    upload = gr.JSON(None, visible=False) if importable else None
    return ExportControls(markdown, as_json, message, file, import_button, upload)


def wire_export(
    controls: ExportControls,
    prefix: str,
    make: Callable[[Format], Callable[..., Any]],
    inputs: Sequence[Any],
) -> None:
    """Both downloads; `make(fmt)` is the handler of `inputs` (ExportHandlers.chat/.compare)."""
    for fmt, button in (("markdown", controls.markdown), ("json", controls.json)):
        button.click(
            make(fmt),  # type: ignore[arg-type]
            inputs=list(inputs),
            outputs=[controls.file, controls.notice],
            api_name=f"export_{prefix}_{fmt}",
            preprocess=False,
            show_progress="hidden",
        ).success(fn=None, js=SAVE_FILE_JS, inputs=[controls.file], outputs=[controls.file])


def wire_import(
    controls: ExportControls,
    handlers: ExportHandlers,
    outputs: Sequence[Any],
    after_import: Sequence[dict[str, Any]],
) -> None:
    """Chat's Import: `outputs` are the chatbot, model, system prompt, temperature, top-p
    and max tokens; `after_import` are the events that follow a good import (keep the chat
    in the browser, update what follows from the imported model)."""
    assert controls.import_button is not None and controls.upload is not None
    imported = controls.import_button.click(
        handlers.import_chat,
        inputs=[controls.upload],
        outputs=[*outputs, controls.notice],
        js=pick_file_js(handlers.limit_bytes, ".json,application/json"),
        api_name="import_chat",
        preprocess=False,
        show_progress="hidden",
    )
    for event in after_import:
        imported.success(**event)
