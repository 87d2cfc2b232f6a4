"""An image sent with a message: checked, resized to what the model uses, kept for the chat.

An upload reaches the app as a file in Gradio's upload folder (its `/upload` route; capped
by ui/web/request_limits.py). `prepare_upload` turns it into the image the model gets:

- at most `image_max_bytes` (LLM_IMAGE_MAX_BYTES, 10 MB) before anything decodes it;
- PNG, JPEG, WebP or GIF (its first frame), as Pillow reads the file's own bytes (the
  name and the browser's MIME type are not trusted);
- no more pixels than Pillow's decompression-bomb limit (`Image.MAX_IMAGE_PIXELS`, about
  89 MP): the header says the size, so a 1 MB PNG that would inflate to gigabytes is
  refused before it is decoded; a broken or truncated file is refused when decoded;
- turned upright (EXIF orientation, as phones save photos), then scaled down so that its
  *shorter* side is at most `MODEL_IMAGE_SIDE` (896) and its longer side at most twice
  that, keeping the aspect ratio, never enlarged. Why "shorter side": Gemma 3 in Ollama
  squashes every image to exactly 896x896 without keeping its aspect ratio
  (ollama/ollama v0.24.0 model/models/gemma3/process_image.go `ImageProcessor.ProcessImage`:
  `imageproc.Resize(..., image.Point{p.imageSize, p.imageSize}, ...)`, `imageSize` from the
  GGUF's `vision.image_size`, 896 for Gemma 3's SigLIP encoder). Fitting the whole image
  inside the 896 box would throw away rows of a wide photo that the model would have seen;
  covering the box keeps every row and column it resolves (up to 2:1), and no more;
- re-encoded: a JPEG stays JPEG (quality 90), anything else becomes PNG (lossless sources
  stay lossless; transparency is flattened onto white, as Ollama's `imageproc.Composite`
  does anyway). An image already within the box and in PNG or JPEG is sent unchanged.

The result is saved in Gradio's upload folder as `<sha256>.<png|jpg>` (the digest of the
bytes the model gets): the Chatbot shows it as a thumbnail in the user's message, the
browser sends its path back with the history, and later turns read it again
(`history_image_bytes`) so the model keeps seeing it. The digest is what a reply's MAC binds
(ui/share/reply_mac.py).
"""

from __future__ import annotations

import hashlib
import io
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from PIL import Image, ImageOps, UnidentifiedImageError

from ui.compat.gradio_internals import in_upload_folder, upload_folder
from ui.errors import InputRejected
from ui.turn.history import image_digest

MODEL_IMAGE_SIDE: Final = 896  # Gemma 3 (see the module docstring)
MAX_ASPECT: Final = 2  # the longer side is at most this many times MODEL_IMAGE_SIDE
ACCEPTED_FORMATS: Final = {"PNG": "PNG", "JPEG": "JPEG", "WEBP": "WebP", "GIF": "GIF"}
JPEG_QUALITY: Final = 90
SAVED_DIR: Final = "sent-images"  # under Gradio's upload folder
MIME_TYPES: Final = {"png": "image/png", "jpg": "image/jpeg"}


class ImageRejected(InputRejected):
    """The attached image cannot be used; `user_message` says why."""


@dataclass(frozen=True)
class SentImage:
    """An image as the model gets it, saved where the Chatbot can show it."""

    path: str  # in Gradio's upload folder, named by `sha256`
    mime_type: str
    sha256: str  # hex digest of `data`
    data: bytes
    width: int
    height: int

    def ref(self) -> dict[str, str]:
        """How a display message holds it (ui/turn/history.py)."""
        return {"path": self.path, "mime_type": self.mime_type}


def upload_path(raw: object) -> str | None:
    """The file path of an image input's raw value (Gradio FileData, or a plain path from
    an API caller); None when nothing is attached."""
    if raw is None or raw == "":
        return None
    if isinstance(raw, dict):
        raw = raw.get("path")
    if not isinstance(raw, str) or not raw:
        raise ImageRejected("The attached image could not be read: send it again.")
    return raw


def target_size(width: int, height: int) -> tuple[int, int]:
    """The size the model gets (see the module docstring): the shorter side at most
    MODEL_IMAGE_SIDE, the longer at most MAX_ASPECT times that, aspect ratio kept."""
    scale = min(
        1.0,
        MODEL_IMAGE_SIDE / min(width, height),
        MODEL_IMAGE_SIDE * MAX_ASPECT / max(width, height),
    )
    return max(1, round(width * scale)), max(1, round(height * scale))


def prepare_upload(raw: object, *, max_bytes: int) -> SentImage | None:
    """The checked, resized image of an upload (None when nothing is attached). Raises
    ImageRejected naming the problem."""
    path = upload_path(raw)
    if path is None:
        return None
    data = _read_uploaded(path, max_bytes)
    return encode_for_model(data)


def _read_uploaded(path: str, max_bytes: int) -> bytes:
    # Gradio already refuses queue inputs outside its upload folder; an API caller's
    # explicit call is checked here too, so no other file of the server can be sent.
    if not in_upload_folder(path):
        raise ImageRejected("The attached image was not uploaded to this app: attach it again.")
    try:
        size = os.stat(path).st_size
        with open(path, "rb") as file:
            data = file.read(max_bytes + 1)  # never more than the cap, whatever stat said
    except OSError:
        raise ImageRejected(
            "The attached image is no longer on this server: attach it again."
        ) from None
    if len(data) > max_bytes:
        raise ImageRejected(
            f"The image is {max(size, len(data)) / 1e6:.1f} MB; the limit is "
            f"{max_bytes / 1e6:g} MB. Attach a smaller one."
        )
    return data


def encode_for_model(data: bytes) -> SentImage:
    """Decode, check, resize and re-encode `data`; saves the result (module docstring)."""
    try:
        with warnings.catch_warnings():
            # Pillow warns above MAX_IMAGE_PIXELS and raises above twice that; both refused.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as image:
                kind = image.format or ""
                if kind not in ACCEPTED_FORMATS:
                    raise ImageRejected(
                        f"That is a {kind or 'file'} image; attach a PNG, JPEG, WebP or GIF."
                    )
                image.seek(0)  # a GIF's (or animated WebP's) first frame
                if kind == "JPEG":
                    # Decode at 1/2, 1/4 or 1/8 scale when that still covers the target
                    # (libjpeg's DCT scaling): a 12 MP photo decodes several times faster.
                    image.draft("RGB", target_size(*image.size))
                image.load()
                rotated = _has_exif_rotation(image)
                upright = ImageOps.exif_transpose(image)
                encoded, mime = _resized(upright, kind, data, as_is=not rotated)
                width, height = upright.size if encoded is data else _size_of(encoded)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        limit = Image.MAX_IMAGE_PIXELS or 0
        raise ImageRejected(
            f"The image has too many pixels (the limit is {limit / 1e6:.0f} megapixels): "
            "it may be a decompression bomb. Attach a smaller image."
        ) from None
    except UnidentifiedImageError:
        raise ImageRejected("That file is not an image: attach a PNG, JPEG, WebP or GIF.") from None
    except (OSError, SyntaxError, ValueError) as exc:
        if isinstance(exc, ImageRejected):
            raise
        # Pillow raises OSError ("image file is truncated", "broken data stream") or
        # SyntaxError for damaged files.
        raise ImageRejected(
            "The image file is damaged or cut short and cannot be read: attach it again."
        ) from None
    return _save(encoded, mime, width, height)


def _resized(image: Image.Image, kind: str, original: bytes, *, as_is: bool) -> tuple[bytes, str]:
    """(bytes the model gets, MIME type); `as_is`: `original` may be sent unchanged."""
    size = target_size(*image.size)
    if as_is and size == image.size and kind in ("PNG", "JPEG"):
        return original, "image/png" if kind == "PNG" else "image/jpeg"
    has_alpha = image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info
    rgb = image.convert("RGBA" if has_alpha else "RGB")
    if has_alpha:
        white = Image.new("RGBA", rgb.size, (255, 255, 255, 255))
        rgb = Image.alpha_composite(white, rgb).convert("RGB")
    if rgb.size != size:
        rgb = rgb.resize(size, Image.Resampling.LANCZOS)
    out = io.BytesIO()
    if kind == "JPEG":
        rgb.save(out, "JPEG", quality=JPEG_QUALITY)
        return out.getvalue(), "image/jpeg"
    rgb.save(out, "PNG", optimize=False)
    return out.getvalue(), "image/png"


def _has_exif_rotation(image: Image.Image) -> bool:
    # Any orientation tag but 1 (upright) means the stored pixels are turned or mirrored.
    orientation = image.getexif().get(0x0112, 1)
    return orientation not in (None, 1)


def _size_of(data: bytes) -> tuple[int, int]:
    with Image.open(io.BytesIO(data)) as image:
        return image.size


def _save(data: bytes, mime_type: str, width: int, height: int) -> SentImage:
    digest = hashlib.sha256(data).hexdigest()
    extension = "jpg" if mime_type == "image/jpeg" else "png"
    folder = Path(upload_folder()) / SAVED_DIR
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{digest}.{extension}"
    if not path.exists():
        temporary = path.with_suffix(f".{os.getpid()}.tmp")
        temporary.write_bytes(data)
        temporary.replace(path)  # atomic: a concurrent send of the same image reads it whole
    return SentImage(str(path), mime_type, digest, data, width, height)


# === images in the history the browser sends back =======================================
def history_image_bytes(path: str, *, max_bytes: int) -> bytes | None:
    """The bytes of an image sent earlier in this conversation, for the model to see it
    again; None when it is not on this server any more (another instance, a restart)."""
    if image_digest(path) is None or not in_upload_folder(path):
        return None
    try:
        with open(path, "rb") as file:
            data = file.read(max_bytes + 1)
    except OSError:
        return None
    if len(data) > max_bytes or hashlib.sha256(data).hexdigest() != image_digest(path):
        return None
    return data
