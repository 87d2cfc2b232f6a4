"""What resizing an attached image adds to a send: `ui.turn.images.encode_for_model` (decode,
turn upright, resize to what Gemma 3 uses, re-encode, save) on photo-like pictures of
12 MP, 4 MP and 1 MP, JPEG and PNG; median and p90 milliseconds over `--runs`.

    .venv/bin/python -m bench.image_resize [--runs 9]
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import time

from PIL import Image, ImageFilter

from ui.turn.images import encode_for_model

SIZES = {"12 MP": (4000, 3000), "4 MP": (2304, 1728), "1 MP": (1152, 864)}


def picture(width: int, height: int, kind: str) -> bytes:
    """Noise blurred a little: compresses like a photo, unlike a flat test card."""
    noise = Image.frombytes("RGB", (width // 4, height // 4), os.urandom(width * height * 3 // 16))
    image = noise.resize((width, height), Image.Resampling.BICUBIC).filter(ImageFilter.BLUR)
    out = io.BytesIO()
    image.save(out, kind, **({"quality": 90} if kind == "JPEG" else {}))
    return out.getvalue()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=9)
    args = parser.parse_args()
    print(f"load average {os.getloadavg()[0]:.2f}; {args.runs} runs each\n")
    print("| picture | file | sent as | median ms | p90 ms |")
    print("|---|---|---|---|---|")
    for label, (width, height) in SIZES.items():
        for kind in ("JPEG", "PNG"):
            data = picture(width, height, kind)
            times = []
            for _ in range(args.runs):
                started = time.perf_counter()
                sent = encode_for_model(data)
                times.append((time.perf_counter() - started) * 1000)
            times.sort()
            p90 = times[min(len(times) - 1, int(0.9 * len(times)))]
            file = f"{kind} {len(data) / 1e6:.1f} MB"
            out = f"{sent.width}x{sent.height} {sent.mime_type} {len(sent.data) / 1e3:.0f} KB"
            print(f"| {label} {width}x{height} | {file} | {out} | "
                  f"{statistics.median(times):.0f} | {p90:.0f} |")  # fmt: skip


if __name__ == "__main__":
    main()
