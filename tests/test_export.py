"""Export and import (ui/share/export.py, ui/pages/export.py): the schema and its round trip,
every bad file's message through the real app, a Compare export, and in Chromium a chat
exported by its download, imported into a fresh page, and continued."""

from __future__ import annotations

import base64
import io
import json
import re
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from gradio_client import Client
from PIL import Image
from playwright.sync_api import Browser, Page, expect

from devtools.testkit.browser import set_max_tokens, set_number
from devtools.testkit.chat_app import chat, msg, running_app
from devtools.testkit.procs import ARTIFACTS
from ui.share.export import (
    ConversationExport,
    ExportedColumn,
    ExportedParameters,
    ImportRejected,
    export_file_name,
    export_messages,
    import_limit_bytes,
    parse_export,
    to_chatbot,
    to_markdown,
)
from ui.share.format import decode_share
from ui.turn.figures import NoteData, ReplyFigures
from ui.view.notes import error_note, stats_note, stopped_note

SMOL, GEMMA = "smollm2:135m", "gemma3:270m"
MAX_CHARS = 300
MAX_REQUEST = 256 * 1024
SECRET = "export-test-share-secret-0123456789"
WHEN = datetime(2026, 12, 7, 13, 4, 5, tzinfo=UTC)


def png_bytes(colour: str = "red") -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 6), colour).save(buffer, format="PNG")
    return buffer.getvalue()


def figures_note(model: str = SMOL) -> dict[str, Any]:
    figures = ReplyFigures(ttft_s=0.21, tokens_per_s=31.5, eval_count=8, total_s=0.5)
    data = NoteData(figures=figures, model=model, mac="A" * 22)
    return stats_note(figures, model=model, data=data)


def upload(document: Any, name: str = "chat.json", raw: bytes | None = None) -> dict[str, Any]:
    data = raw if raw is not None else json.dumps(document).encode()
    url = "data:application/json;base64," + base64.b64encode(data).decode()
    return {"name": name, "size": len(data), "data_url": url}


def an_export(messages: list[Any], **changes: Any) -> dict[str, Any]:
    document: dict[str, Any] = {
        "format": "serverless-llm-chat/conversation",
        "version": 1,
        "kind": "chat",
        "exported_at": "2026-12-07T13:04:05Z",
        "parameters": {
            "system_prompt": "Be brief.",
            "temperature": 0.0,
            "top_p": 0.9,
            "max_tokens": 16,
        },
        "columns": [{"model": SMOL, "messages": messages}],
    }
    return {**document, **changes}


def text_message(role: str, text: str) -> dict[str, Any]:
    return {"type": "message", "role": role, "content": [{"type": "text", "text": text}]}


# === the schema and its round trip (no app) ==============================================
def test_a_history_with_notes_and_an_image_round_trips_exactly(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    cache.mkdir()
    image = cache / "upload" / "cat.png"
    image.parent.mkdir()
    image.write_bytes(png_bytes())
    history = [
        {"role": "user", "content": [
            {"type": "text", "text": "What is this?"},
            {"type": "file", "file": {"path": str(image), "mime_type": "image/png",
                                      "orig_name": "cat.png"}},
        ]},
        msg("assistant", "  A red\n    rectangle."),  # indentation kept
        figures_note(),
        msg("user", "Longer?"),
        msg("assistant", "A red"),
        stopped_note(ReplyFigures(ttft_s=0.3, total_s=0.4)),
        msg("user", "Again"),
        error_note("The model backend failed.", partial=False),
    ]  # fmt: skip

    def read(path: str) -> bytes | None:
        return Path(path).read_bytes() if Path(path).is_relative_to(cache) else None

    left_out: list[str] = []
    column = ExportedColumn(model=SMOL, messages=export_messages(history, read, left_out))
    assert left_out == []
    export = ConversationExport(
        format="serverless-llm-chat/conversation", version=1, kind="chat", exported_at=WHEN,
        parameters=ExportedParameters(system_prompt="", temperature=0.0, top_p=0.9,
                                      max_tokens=16),
        columns=[column],
    )  # fmt: skip
    text = export.to_json()
    document = json.loads(text)
    [first, reply, note] = document["columns"][0]["messages"][:3]
    assert first["content"][1]["data_url"] == (
        "data:image/png;base64," + base64.b64encode(png_bytes()).decode()
    )
    assert reply["content"] == [{"type": "text", "text": "  A red\n    rectangle."}]
    assert note["reply"] == {
        "figures": {"ttft_s": 0.21, "tokens_per_s": 31.5, "eval_count": 8, "total_s": 0.5},
        "model": SMOL, "mac": "A" * 22,
    }  # fmt: skip
    assert [m["type"] for m in document["columns"][0]["messages"]] == [
        "message", "message", "note", "message", "message", "note", "message", "note",
    ]  # fmt: skip

    imported = parse_export(text.encode())
    restored = to_chatbot(imported.columns[0], cache)
    written = Path(restored[0]["content"][1]["file"]["path"])
    assert written.is_relative_to(cache) and written.read_bytes() == png_bytes()
    assert restored[2]["metadata"] == figures_note()["metadata"]
    again = export_messages(restored, read, left_out)
    assert ExportedColumn(model=SMOL, messages=again) == column

    markdown = to_markdown(imported)
    assert "## You\n\nWhat is this?\n[image: cat.png]" in markdown
    assert "## SmolLM2 135M Instruct\n\n  A red\n    rectangle." in markdown
    assert "> *Stopped · 0.30 s to first token · 0.40 s total*" in markdown
    assert export_file_name("chat", WHEN, "md") == "chat-2026-12-07-1304.md"


def test_a_file_the_server_lacks_or_of_another_type_is_left_out_and_said() -> None:
    history = [
        {"role": "user", "content": [
            {"type": "text", "text": "Look"},
            {"type": "file", "file": {"path": "/gone/cat.png", "mime_type": "image/png"}},
            {"type": "file", "file": {"path": "/x/page.svg", "mime_type": "image/svg+xml"}},
        ]},
    ]  # fmt: skip
    left_out: list[str] = []
    [message] = export_messages(history, lambda path: None, left_out)
    assert message.content == [message.content[0]] and message.text == "Look"
    assert left_out == [
        "Left out the file in message 1: this server no longer has it.",
        "Left out the file in message 1: only images are exported (image/svg+xml).",
    ]


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"\xff\xfe not text", "This file is not a conversation export: it is not text."),
        (b"{\n  oops", "it is not JSON (line 2, column 3)."),
        (b'{"hello": 1}', "is not a conversation export of this app"),
        (json.dumps(an_export([], version=2)).encode(),
         "This export has format version 2; this app reads version 1."),
        (json.dumps(an_export([text_message("user", "Hi")], extra=1)).encode(),
         "This export cannot be imported: “extra” is not part of this format."),
        (json.dumps(an_export([{"type": "message", "role": "robot", "content": []}])).encode(),
         "column 1, message 1, “role” has a value this format does not have."),
        (json.dumps(an_export([{"type": "message", "role": "user", "content": [
            {"type": "file", "mime_type": "image/png",
             "data_url": "data:image/png;base64," + base64.b64encode(b"<svg/>").decode()}]}]
         )).encode(),
         "column 1, message 1, content part 1 is wrong: its bytes are not of type image/png."),
        (json.dumps(an_export([text_message("user", "Hi")], parameters={
            "system_prompt": "", "temperature": "hot", "top_p": 0.9, "max_tokens": 16})).encode(),
         "“parameters”, “temperature” has the wrong type."),
    ],
)  # fmt: skip
def test_each_bad_file_gets_a_message_naming_its_problem(raw: bytes, message: str) -> None:
    with pytest.raises(ImportRejected) as caught:
        parse_export(raw)
    assert message in caught.value.user_message


# === the real app: bad files, an image, Compare ==========================================
@pytest.fixture(scope="module")
def app_url(engine: str) -> Iterator[str]:
    with running_app(
        backend_url=engine,
        allowed_models=[SMOL, GEMMA],
        max_message_chars=MAX_CHARS,
        max_tokens_limit=64,
        max_request_bytes=MAX_REQUEST,
        rate_limit_per_minute=1000,
        share_secret=SECRET,
    ) as url:
        yield url


def notice_text(html: str) -> str:
    return re.sub(r"<[^>]+>", "", html).replace("&#x27;", "'").replace("&quot;", '"')


@pytest.mark.parametrize(
    ("document", "message"),
    [
        (an_export([text_message("user", "Hi")], columns=[
            {"model": "llama9:7b", "messages": [text_message("user", "Hi")]}]),
         "The model “llama9:7b” is not offered here. Choose one of: smollm2:135m, gemma3:270m."),
        (an_export([text_message("user", "x" * (MAX_CHARS + 1))]),
         "Message 1 of the conversation (your message) is 301 characters long; the limit is "
         "300. This file cannot be imported."),
        (an_export([], kind="compare", columns=[{"model": SMOL, "messages": []},
                                                {"model": GEMMA, "messages": []}]),
         "“chat.json” is a comparison of 2 models; Chat imports a chat export (one model)."),
    ],
)  # fmt: skip
def test_the_app_rejects_a_bad_import_and_changes_nothing(
    client: Client, document: Any, message: str
) -> None:
    *outputs, said = client.predict(upload(document), api_name="/import_chat")
    assert all(o == {"__type__": "update"} for o in outputs), outputs
    assert "chat-banner-error" in said and message in notice_text(said)


def test_a_file_at_the_cap_passes_the_request_body_cap_and_one_byte_more_is_refused(
    client: Client,
) -> None:
    limit = import_limit_bytes(MAX_REQUEST)
    padded = json.dumps({"format": "other"}).encode()
    at_limit = padded[:-1] + b" " * (limit - len(padded)) + b"}"
    *_, said = client.predict(upload(None, raw=at_limit), api_name="/import_chat")
    assert "is not a conversation export of this app" in notice_text(said)  # it was read
    *_, said = client.predict(upload(None, raw=at_limit + b" "), api_name="/import_chat")
    too_large = "“chat.json” is too large to import (189 KB); the largest export that can"
    assert f"{too_large} be imported is 189 KB." in notice_text(said)


def test_a_file_over_the_cap_is_refused_before_it_is_read(client: Client) -> None:
    too_big = {"name": "big.json", "size": MAX_REQUEST, "data_url": None}
    *_, said = client.predict(too_big, api_name="/import_chat")
    too_large = "“big.json” is too large to import (256 KB); the largest export that can"
    assert f"{too_large} be imported is 189 KB." in notice_text(said)


def test_an_import_restores_the_parameters_and_the_app_serves_its_image(
    client: Client,
) -> None:
    image = "data:image/png;base64," + base64.b64encode(png_bytes("blue")).decode()
    messages = [
        {"type": "message", "role": "user", "content": [
            {"type": "text", "text": "Colour?"},
            {"type": "file", "mime_type": "image/png", "name": "blue.png", "data_url": image}]},
        text_message("assistant", "Blue."),
    ]  # fmt: skip
    document = an_export(messages)
    history, model, system_prompt, temperature, top_p, max_tokens, said = client.predict(
        upload(document), api_name="/import_chat"
    )
    assert (model, system_prompt, temperature, top_p, max_tokens) == (SMOL, "Be brief.", 0, 0.9, 16)
    assert "Imported chat.json: 1 message with smollm2:135m." in notice_text(said)
    # gradio_client fetched the image from the app's file route into its own folder.
    [text, image_part] = history[0]["content"]
    assert text == {"type": "text", "text": "Colour?"} and image_part["type"] == "file"
    assert Path(image_part["file"]).read_bytes() == png_bytes("blue")


def shared_macs(client: Client, history: Any) -> list[str | None]:
    """The MACs a share link of `history` keeps: a reply's, only if it verifies."""
    link, _ = client.predict(history, SMOL, "", 0.0, 0.9, 8, api_name="/share_chat")
    token = parse_qs(urlsplit(link).query)["share"][0]
    conv = decode_share(token, SECRET.encode())
    return [m.mac for m in conv.columns[0].messages if m.role == "assistant"]


def test_an_imported_reply_stays_verified_unless_the_file_changed_it(client: Client) -> None:
    _, history, _ = chat(client, "Say hi.", temperature=0.0, max_tokens=8)
    file, _ = client.predict(history, SMOL, "", 0.0, 0.9, 8, api_name="/export_chat_json")
    document = json.loads(file["text"])
    [mac] = shared_macs(client, history)
    assert mac is not None and document["columns"][0]["messages"][2]["reply"]["mac"] == mac

    imported, *_ = client.predict(upload(document), api_name="/import_chat")
    assert shared_macs(client, imported) == [mac]
    document["columns"][0]["messages"][1]["content"][0]["text"] += " (edited)"
    edited, *_ = client.predict(upload(document), api_name="/import_chat")
    assert shared_macs(client, edited) == [None]


def test_compare_exports_every_column_with_its_figures(client: Client) -> None:
    outputs = client.predict("Say hi.", [SMOL, GEMMA], "", 0.0, 8, [], [], [], api_name="/compare")
    chats = [outputs[2], outputs[4], outputs[6]]
    file, said = client.predict([SMOL, GEMMA], "", 0.0, 8, *chats, api_name="/export_compare_json")
    export = ConversationExport.model_validate_json(file["text"], strict=True)
    assert file["name"].startswith("compare-") and file["name"].endswith(".json")
    assert f"Saved {file['name']}." in notice_text(said)
    assert export.kind == "compare" and [c.model for c in export.columns] == [SMOL, GEMMA]
    for column in export.columns:
        user, reply, note = column.messages
        assert user.text == "Say hi." and reply.text  # type: ignore[union-attr]
        assert note.reply is not None and note.reply.model == column.model  # type: ignore[union-attr]
        assert note.reply.figures.eval_count  # type: ignore[union-attr]
    markdown, _ = client.predict(
        [SMOL, GEMMA], "", 0.0, 8, *chats, api_name="/export_compare_markdown"
    )
    assert markdown["text"].startswith("# Comparison of SmolLM2 135M Instruct (`smollm2:135m`)")
    assert "## Gemma 3 270M (base) (`gemma3:270m`)\n\n### You\n\nSay hi." in markdown["text"]
    empty, nothing = client.predict(
        [SMOL, GEMMA], "", 0.0, 8, [], [], [], api_name="/export_compare_json"
    )
    assert empty is None and "nothing to export yet" in notice_text(nothing)


# === Chromium: download, import into a fresh page, continue ==============================


def open_chat(browser: Browser, url: str) -> Page:
    page = browser.new_context(viewport={"width": 1280, "height": 1000}).new_page()
    page.goto(url)
    expect(page.locator("#model input")).to_have_value(
        re.compile("SmolLM2|smollm2"), timeout=30_000
    )
    return page


def replies_done(page: Page, count: int) -> None:
    expect(page.locator("#chatbot .thought .title")).to_have_count(count, timeout=120_000)


def download(page: Page, button: str, tmp_path: Path) -> Path:
    with page.expect_download() as caught:
        page.locator(button).click()
    path = tmp_path / caught.value.suggested_filename
    caught.value.save_as(path)
    return path


@pytest.mark.browser
def test_a_chat_exported_and_imported_in_chromium_is_the_same_and_continues(
    browser: Browser, app_url: str, tmp_path: Path
) -> None:
    page = open_chat(browser, app_url)
    set_number(page, "#temperature", 0)
    set_max_tokens(page, 8)
    for text in ("Hello!", "Name a colour."):
        page.locator("#message textarea").fill(text)
        page.locator("#send").click()
        replies_done(page, 1 if text == "Hello!" else 2)
    page.locator("#chat-export").get_by_text("Export and import").click()
    ARTIFACTS.mkdir(exist_ok=True)
    page.locator("#chat-side").screenshot(path=ARTIFACTS / "export-menu-chat.png")
    exported = download(page, "#chat-export-json", tmp_path)
    assert re.fullmatch(r"chat-\d{4}-\d\d-\d\d-\d{4}\.json", exported.name)
    markdown = download(page, "#chat-export-md", tmp_path).read_text()
    assert markdown.count("## You") == 2 and "> *" in markdown
    original = json.loads(exported.read_text())
    assert original["parameters"]["temperature"] == 0 and original["parameters"]["max_tokens"] == 8

    fresh = open_chat(browser, app_url)  # a new context: nothing saved in it
    fresh.locator("#chat-export").get_by_text("Export and import").click()
    with fresh.expect_file_chooser() as chooser:
        fresh.locator("#chat-import").click()
    chooser.value.set_files(str(exported))
    expect(fresh.locator("#chat-export-notice")).to_contain_text(
        "Imported " + exported.name + ": 2 messages with smollm2:135m."
    )
    fresh.locator("#chat-side").screenshot(path=ARTIFACTS / "export-menu-imported.png")
    expect(fresh.locator("#max-tokens input[type=number]")).to_have_value("8")
    expect(fresh.locator("#temperature input[type=number]")).to_have_value("0")
    again = json.loads(download(fresh, "#chat-export-json", tmp_path).read_text())
    assert again["columns"] == original["columns"] and again["parameters"] == original["parameters"]

    fresh.locator("#message textarea").fill("And another?")
    fresh.locator("#send").click()
    replies_done(fresh, 3)
    continued = json.loads(download(fresh, "#chat-export-json", tmp_path).read_text())
    messages = continued["columns"][0]["messages"]
    assert messages[: len(original["columns"][0]["messages"])] == original["columns"][0]["messages"]
    assert messages[-3]["content"] == [{"type": "text", "text": "And another?"}]

    # A bad file: the message names it, the conversation stays.
    bad = tmp_path / "notes.txt"
    bad.write_text("not json")
    with fresh.expect_file_chooser() as chooser:
        fresh.locator("#chat-import").click()
    chooser.value.set_files(str(bad))
    expect(fresh.locator("#chat-export-notice")).to_contain_text("it is not JSON")
    expect(fresh.locator("#chatbot .thought .title")).to_have_count(3)
    fresh.locator("#chat-side").screenshot(path=ARTIFACTS / "export-menu-bad-file.png")

    # An export holding an image: imported, it shows as a picture the app serves, and
    # exporting it again gives the same bytes.
    image = "data:image/png;base64," + base64.b64encode(png_bytes("green")).decode()
    with_image = an_export([
        {"type": "message", "role": "user", "content": [
            {"type": "text", "text": "Colour?"},
            {"type": "file", "mime_type": "image/png", "name": "green.png", "data_url": image}]},
        text_message("assistant", "Green."),
    ])  # fmt: skip
    picture = tmp_path / "with-image.json"
    picture.write_text(json.dumps(with_image))
    with page.expect_file_chooser() as chooser:
        page.locator("#chat-import").click()
    chooser.value.set_files(str(picture))
    expect(page.locator("#chat-export-notice")).to_contain_text("Imported with-image.json")
    shown = page.locator("#chatbot img").first
    expect(shown).to_be_visible()
    assert page.evaluate("(img) => img.naturalWidth", shown.element_handle()) == 8
    reexported = json.loads(download(page, "#chat-export-json", tmp_path).read_text())
    assert reexported["columns"] == with_image["columns"]

    page.get_by_role("tab", name="Compare").click()
    page.locator("#compare-export").get_by_text("Export").click()
    page.locator("#compare-export").screenshot(path=ARTIFACTS / "export-menu-compare.png")
