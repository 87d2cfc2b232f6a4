"""Images in a message: a fake Ollama (an HTTP server) that reports a vision model and
records what it gets, the real app, Chromium for the happy path, gradio_client for the
refusals; the real engine for how a text-only model answers an image."""

from __future__ import annotations

import asyncio
import base64
import copy
import hashlib
import io
import struct
import zlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from gradio_client import Client, handle_file
from PIL import Image
from playwright.sync_api import Browser, expect

from bench.gradio_queue import GradioQueue
from devtools.testkit.browser import REPLIES, send
from devtools.testkit.chat_app import msg, running_app, text_of
from devtools.testkit.fake_ollama import TEXT_ONLY, VISION, VISION_TOO, VisionOllama
from devtools.testkit.procs import ARTIFACTS
from ui.backend_access.labels import label_for
from ui.compat.gradio_internals import upload_folder
from ui.share.format import SharedConversation, decode_share
from ui.share.reply_mac import ReplyMacs
from ui.share.service import IMAGE_PLACEHOLDER, to_display_messages
from ui.turn.history import file_part
from ui.turn.images import (
    MODEL_IMAGE_SIDE,
    ImageRejected,
    encode_for_model,
    prepare_upload,
    target_size,
)

PARAMS = ("", 0.0, 0.9, 16)  # system prompt, temperature, top-p, max tokens
SECRET = "images-test-share-secret-0123456789"


def photo(width: int, height: int, kind: str = "PNG") -> bytes:
    """A picture with detail (a gradient), so resizing has something to do."""
    image = Image.linear_gradient("L").resize((width, height)).convert("RGB")
    out = io.BytesIO()
    image.save(out, kind)
    return out.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims `width` x `height` with almost no data: a bomb's shape."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    pixels = zlib.compress(b"\0" * 1000)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")
    )


@pytest.fixture(scope="module")
def fake() -> Iterator[VisionOllama]:
    with VisionOllama() as server:
        yield server


@pytest.fixture(scope="module")
def app_url(fake: VisionOllama) -> Iterator[str]:
    with running_app(backend_url=fake.url, image_max_bytes=2_000_000, share_secret=SECRET) as url:
        yield url


def write(tmp_path: Path, name: str, data: bytes) -> str:
    path = tmp_path / name
    path.write_bytes(data)
    return str(path)


def chat(client: Client, text: str, model: str, image: str | None) -> tuple[str, list, str]:
    upload = handle_file(image) if image else None
    result = client.predict(text, [], model, *PARAMS, upload, api_name="/chat_with_image")
    return result[0], result[1], result[2]


# === what the model gets ================================================================
def test_formats_frames_orientation_and_small_images() -> None:
    frames = [Image.new("RGB", (40, 30), colour) for colour in ("red", "blue")]
    gif = io.BytesIO()
    frames[0].save(gif, "GIF", save_all=True, append_images=frames[1:])
    first = encode_for_model(gif.getvalue())
    assert first.mime_type == "image/png"
    with Image.open(io.BytesIO(first.data)) as got:
        assert got.convert("RGB").getpixel((5, 5)) == (255, 0, 0)  # the first frame
    webp = io.BytesIO()
    Image.new("RGBA", (2000, 1000), (0, 0, 0, 0)).save(webp, "WEBP")
    flat = encode_for_model(webp.getvalue())
    assert (flat.width, flat.height, flat.mime_type) == (1792, 896, "image/png")
    with Image.open(io.BytesIO(flat.data)) as got:
        assert got.getpixel((3, 3)) == (255, 255, 255)  # transparency on white
    # A phone photo stored sideways (EXIF orientation 6: turn 90° clockwise to view).
    sideways = io.BytesIO()
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.new("RGB", (1600, 1200), "green").save(sideways, "JPEG", exif=exif)
    upright = encode_for_model(sideways.getvalue())
    assert (upright.width, upright.height) == (896, 1195)
    # Already small and PNG: sent byte for byte.
    small = photo(300, 200)
    assert encode_for_model(small).data == small


# === the happy path, in Chromium ========================================================
def test_an_attached_image_reaches_the_model_resized_and_shows_in_the_message(
    browser: Browser, app_url: str, fake: VisionOllama, tmp_path: Path
) -> None:
    original = photo(2000, 1500)
    path = write(tmp_path, "photo.png", original)
    page = browser.new_page()
    page.goto(app_url)
    image_box = page.locator("#image")
    # A text-only model: no image control.
    page.locator("#model input").click()
    page.get_by_role("option", name=label_for(TEXT_ONLY).text).click()
    expect(image_box).to_be_hidden()
    page.locator("#model input").click()
    page.get_by_role("option", name=label_for(VISION).text).click()
    expect(image_box).to_be_visible()
    before = len(fake.chat_requests())
    page.locator("#image input[type=file]").set_input_files(path)
    expect(page.locator("#image img")).to_be_visible()
    send(page, "What is in this picture?")
    expect(page.locator(REPLIES).last).to_contain_text("I see it.", timeout=30_000)
    thumbnail = page.locator('#chatbot [data-testid="user"] img')
    expect(thumbnail).to_be_visible()
    page.screenshot(path=str(ARTIFACTS / "image_in_message.png"))
    expect(page.locator("#image img")).to_have_count(0)  # the input emptied once sent

    sent = [r for r in fake.chat_requests()[before:] if r.get("messages")][-1]
    last = sent["messages"][-1]
    assert last["content"] == "What is in this picture?"
    received = base64.b64decode(last["images"][0])
    assert received == encode_for_model(original).data
    with Image.open(io.BytesIO(received)) as got:
        assert got.size == target_size(2000, 1500) == (1195, MODEL_IMAGE_SIDE)
    page.close()


# === refusals, through the queue API ====================================================
@pytest.mark.parametrize(
    ("name", "data", "expected"),
    [
        ("notes.png", b"just some text, not a picture\n" * 20, "not an image"),
        ("cut.png", photo(300, 200)[:400], "damaged or cut short"),
        ("bomb.png", png_header_only(30_000, 30_000), "too many pixels"),
        ("scan.bmp", b"", "attach a PNG, JPEG, WebP or GIF"),
    ],
)
def test_bad_images_are_refused_with_their_reason_and_the_text_kept(
    app_url: str, fake: VisionOllama, tmp_path: Path, name: str, data: bytes, expected: str
) -> None:
    if name.endswith(".bmp"):
        out = io.BytesIO()
        Image.new("RGB", (20, 20)).save(out, "BMP")
        data = out.getvalue()
    client = Client(app_url, verbose=False)
    before = len(fake.chat_requests())
    box, history, banner = chat(client, "Look", VISION, write(tmp_path, name, data))
    assert expected in banner
    unchanged = {"__type__": "update"}  # gr.skip(): the box keeps the typed text
    assert box == unchanged
    assert history == unchanged  # nothing added, nothing lost
    assert len(fake.chat_requests()) == before  # nothing reached the model


def test_an_image_for_a_model_that_cannot_see_names_the_model(app_url: str, tmp_path: Path) -> None:
    client = Client(app_url, verbose=False)
    box, _, banner = chat(client, "Look", TEXT_ONLY, write(tmp_path, "a.png", photo(64, 64)))
    assert f"({TEXT_ONLY}) cannot see images" in banner
    assert box == {"__type__": "update"}  # the typed text stays


def test_text_only_callers_of_chat_are_unchanged(app_url: str, fake: VisionOllama) -> None:
    client = Client(app_url, verbose=False)
    result = client.predict("Hello", [], VISION, *PARAMS, api_name="/chat")
    assert result[0] == ""
    assert "I see it." in [text_of(m) for m in result[1]]
    assert "images" not in fake.chat_requests()[-1]["messages"][-1]


def test_a_later_turn_sends_the_earlier_image_again(
    app_url: str, fake: VisionOllama, tmp_path: Path
) -> None:
    # download_files=False: the history keeps the server's file parts, as a browser does.
    client = Client(app_url, verbose=False, download_files=False)
    _, history, _ = chat(client, "First", VISION, write(tmp_path, "b.png", photo(100, 80)))
    result = client.predict("And now?", history, VISION, *PARAMS, api_name="/chat")
    assert "I see it." in text_of(result[1][-1]) or any(
        "I see it." in text_of(m) for m in result[1][-3:]
    )
    messages = fake.chat_requests()[-1]["messages"]
    first, follow_up = messages[0], messages[-1]
    assert first["content"] == "First" and len(first["images"]) == 1
    assert "images" not in follow_up


def test_an_earlier_image_gone_from_this_server_is_left_out_with_a_note(
    app_url: str, fake: VisionOllama
) -> None:
    """After a restart (or on another instance) the saved chat still names the image's
    file: the turn goes on without it. Sent as the browser sends it (gradio_client would
    try to upload the missing file itself)."""
    gone = f"{upload_folder()}/sent-images/{'0' * 64}.png"
    history = [
        {"role": "user", "content": [{"type": "text", "text": "hi"}, file_part(gone, "image/png")]},
        msg("assistant", "hello"),
    ]

    async def as_the_browser_sends_it() -> list:
        async with GradioQueue(app_url) as queue:
            chat_event = await queue.fn_index("chat")
            call = await queue.call(chat_event, ["More", history, VISION, *PARAMS])
        return list(call.outputs[1])

    # In a thread of its own: Playwright's sync API holds this thread's event loop.
    with ThreadPoolExecutor(1) as pool:
        shown = pool.submit(asyncio.run, as_the_browser_sends_it()).result()
    assert "An earlier image was left out (no longer on this server)" in text_of(shown[-1])
    assert all("images" not in m for m in fake.chat_requests()[-1]["messages"])


def test_a_history_image_from_elsewhere_is_refused(app_url: str) -> None:
    """A history may only point at files in Gradio's upload folder."""
    client = Client(app_url, verbose=False)
    history = [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "hi"},
                {"type": "file", "file": {"path": "/etc/passwd", "mime_type": "image/png"}},
            ],
        },
        msg("assistant", "hello"),
    ]
    with pytest.raises(Exception):  # noqa: B017  (Gradio refuses the file before our handler)
        client.predict("More", history, VISION, *PARAMS, api_name="/chat")


def test_an_image_over_the_cap_is_refused_before_decoding() -> None:
    folder = Path(upload_folder()) / "test-images"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "large.png"
    path.write_bytes(photo(400, 400))
    with pytest.raises(ImageRejected, match=r"MB; the limit is 0.001 MB"):
        prepare_upload({"path": str(path)}, max_bytes=1000)
    with pytest.raises(ImageRejected, match="not uploaded to this app"):
        prepare_upload({"path": "/etc/hostname"}, max_bytes=1000)


def test_the_upload_route_takes_images_up_to_its_cap_only(app_url: str) -> None:
    small = httpx.post(
        app_url + "/gradio_api/upload", files={"files": ("a.png", photo(32, 32))}, timeout=10
    )
    assert small.status_code == 200
    big = httpx.post(
        app_url + "/gradio_api/upload",
        files={"files": ("b.png", b"\0" * 2_100_000)},
        timeout=10,
    )
    assert big.status_code == 413


# === Compare and Battle ===============================================================
def test_compare_sends_the_image_to_every_column_and_refuses_a_blind_one(
    app_url: str, fake: VisionOllama, tmp_path: Path
) -> None:
    client = Client(app_url, verbose=False)
    path = write(tmp_path, "d.png", photo(120, 90))
    before = len(fake.chat_requests())
    result = client.predict(
        "Both?", [VISION, VISION_TOO], "", 0.0, 8, [], [], [], handle_file(path),
        api_name="/compare_with_image",
    )  # fmt: skip
    sent = {r["model"]: r for r in fake.chat_requests()[before:] if r.get("messages")}
    assert set(sent) == {VISION, VISION_TOO}
    expected = base64.b64encode(encode_for_model(photo(120, 90)).data).decode()
    assert all(r["messages"][-1]["images"] == [expected] for r in sent.values())
    first_column = result[2]
    assert [part["type"] for part in first_column[0]["content"]] == ["text", "file"]
    refused = client.predict(
        "Both?", [VISION, TEXT_ONLY], "", 0.0, 8, [], [], [], handle_file(path),
        api_name="/compare_with_image",
    )  # fmt: skip
    assert f"({TEXT_ONLY}) cannot see images" in refused[1]


def test_a_battle_with_an_image_is_drawn_among_models_that_see(
    app_url: str, fake: VisionOllama, tmp_path: Path
) -> None:
    client = Client(app_url, verbose=False)
    path = write(tmp_path, "e.png", photo(90, 120))
    before = len(fake.chat_requests())
    result = client.predict(
        "Which?", "", [], [], 0.0, 8, handle_file(path), api_name="/battle_with_image"
    )
    sent = [r for r in fake.chat_requests()[before:] if r.get("messages")]
    assert sorted(r["model"] for r in sent) == sorted([VISION, VISION_TOO])
    assert all(len(r["messages"][-1]["images"]) == 1 for r in sent)
    assert VISION not in str(result) and VISION_TOO not in str(result)  # still blind


# === share links: "[image]" in the link's place, the digest bound by the reply's MAC =====
def test_a_shared_chat_shows_image_in_brackets_and_its_mac_binds_the_image(
    app_url: str, tmp_path: Path
) -> None:
    client = Client(app_url, verbose=False, download_files=False)
    original = photo(300, 200)
    _, history, _ = chat(client, "Which colour?", VISION, write(tmp_path, "c.png", original))

    def shared(history: list) -> SharedConversation:
        link, notice = client.predict(history, VISION, *PARAMS, api_name="/share_chat")
        assert "?share=" in link, notice
        return decode_share(parse_qs(urlsplit(link).query)["share"][0], SECRET.encode())

    conv = shared(history)
    question, reply = conv.columns[0].messages
    digest = hashlib.sha256(encode_for_model(original).data).hexdigest()
    assert question.image == digest and question.content == "Which colour?"
    assert reply.mac is not None  # verified: the MAC binds this image's digest
    # The same text with another image (the digest in its name) is not the same question.
    other = encode_for_model(photo(200, 300))
    swapped = copy.deepcopy(history)
    swapped[0]["content"][1]["file"]["path"] = other.path
    assert shared(swapped).columns[0].messages[1].mac is None
    # Without the image at all, neither.
    text_only = copy.deepcopy(history)
    text_only[0]["content"] = text_only[0]["content"][:1]
    assert shared(text_only).columns[0].messages[1].mac is None
    # The shared view: "[image]" before the text, and the reply marked as generated here.
    shown = to_display_messages(conv.columns[0], macs=ReplyMacs(SECRET.encode()), marked=True)
    assert shown[0]["content"] == f"{IMAGE_PLACEHOLDER} Which colour?"
    assert "✓ Generated here by" in shown[2]["metadata"]["title"]


# === the embedded engine: as Ollama answers a text-only model ===========================
def test_the_engine_reports_no_vision_and_reads_images_as_ollama_does(engine: str) -> None:
    """Ollama v0.24.0 answers a text-only model's images with 200, reading the image's
    `[img-N]` tag as text (server/routes.go ChatHandler asks only for completion;
    server/prompt.go chatPrompt adds the tag; runner/ollamarunner/runner.go Server.inputs),
    and a body whose image is not base64 with 400 "illegal base64 data at input byte N"
    (Go's encoding/json + base64.StdEncoding, through gin's ShouldBindJSON)."""
    shown = httpx.post(engine + "/api/show", json={"model": "smollm2:135m"}, timeout=30).json()
    assert shown["capabilities"] == ["completion"]
    picture = base64.b64encode(photo(16, 16)).decode()
    body = {
        "model": "smollm2:135m",
        "messages": [{"role": "user", "content": "Hi", "images": [picture]}],
        "stream": False,
        "options": {"num_predict": 2, "temperature": 0},
    }
    answer = httpx.post(engine + "/api/chat", json=body, timeout=120)
    assert answer.status_code == 200, answer.text
    assert answer.json()["done"] is True
    body["messages"][0]["images"] = ["abc!"]
    refused = httpx.post(engine + "/api/chat", json=body, timeout=30)
    assert refused.status_code == 400
    assert refused.json() == {"error": "illegal base64 data at input byte 3"}
