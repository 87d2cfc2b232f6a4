"""The Cloud Run GPUs the deploy offers (`--gpu-type`): the one place for their facts.

Sources, checked when this was written (Google adds regions and changes drivers over time):
- driver, minimum shape, regions: Cloud Run's GPU pages, "Supported GPU types" and "Supported
  regions" (https://cloud.google.com/run/docs/configuring/services/gpu and
  https://docs.cloud.google.com/run/docs/configuring/workerpools/gpu);
- which Ollama runs on which driver: deploy/README.md, "Which Ollama".
"""

from __future__ import annotations

from dataclasses import dataclass

# Cloud Run's L4 quota without zonal redundancy (the deploy passes --no-gpu-zonal-redundancy):
# its id and its console name.
L4_QUOTA_ID = "NvidiaL4GpuAllocNoZonalRedundancyPerProjectRegion"
L4_QUOTA_NAME = "Total Nvidia L4 GPU allocation without zonal redundancy, per project per region"


@dataclass(frozen=True)
class Gpu:
    """One Cloud Run GPU type and how the deploy runs Ollama on it."""

    gcloud_name: str  # the value of `gcloud run deploy --gpu-type`
    label: str
    driver: str  # NVIDIA driver (CUDA version) Cloud Run installs
    min_cpu: int  # Cloud Run refuses fewer vCPU with this GPU
    min_memory_gib: int  # and less memory
    cpu: int  # the shape the deploy uses unless told otherwise
    memory_gib: int
    # The newest Ollama release whose CUDA backend runs on `driver` (Dockerfile.llm's
    # OLLAMA_VERSION build argument).
    ollama_version: str
    regions: dict[str, str]  # region -> where, and whether by invitation only
    # Whether the preflight can check this GPU's quota (deploy/preflight.py, L4 only: Google's
    # GPU pages name no quota id for the RTX PRO 6000; Cloud Run refuses the deploy instead).
    quota_checked: bool
    # Whether the UI's default LLM_GPU_PRICE_PER_HOUR is this GPU's instance price at the
    # default shape (README.md, "Honest cost"). Otherwise the deploy asks for the price.
    ui_default_price: bool


L4 = Gpu(
    gcloud_name="nvidia-l4",
    label="NVIDIA L4 (24 GB)",
    driver="535.216.03 (CUDA 12.2)",
    min_cpu=4,
    min_memory_gib=16,
    # Google's recommendation for LLM serving on an L4 (its Ollama and vLLM notebooks use it).
    cpu=8,
    memory_gib=32,
    # 0.30.0 and later need driver 550+ (deploy/README.md, "Which Ollama").
    ollama_version="0.24.0",
    regions={
        "asia-south1": "Mumbai, by invitation only",
        "asia-southeast1": "Singapore",
        "europe-west1": "Belgium",
        "europe-west4": "Netherlands",
        "us-central1": "Iowa, by invitation only for L4 in Google's latest list",
        "us-east4": "Northern Virginia",
    },
    quota_checked=True,
    ui_default_price=True,
)

RTX_PRO_6000 = Gpu(
    gcloud_name="nvidia-rtx-pro-6000",
    label="NVIDIA RTX PRO 6000 Blackwell (96 GB, Preview)",
    driver="580.x (CUDA 13.0)",
    min_cpu=20,
    min_memory_gib=80,
    cpu=20,
    memory_gib=80,
    # The newest Ollama release found (0.34.2, 17 Sep 2026); its cuda_v13 build targets
    # sm_120 (Blackwell) and needs driver 550+ (deploy/README.md, "Which Ollama").
    ollama_version="0.34.2",
    regions={
        "asia-south2": "Delhi, by invitation only",
        "asia-southeast1": "Singapore",
        "europe-west4": "Netherlands",
        "us-central1": "Iowa",
    },
    quota_checked=False,
    # No Cloud Run list price for it was found: --gpu-price-per-hour is required.
    ui_default_price=False,
)

GPUS: dict[str, Gpu] = {gpu.gcloud_name: gpu for gpu in (L4, RTX_PRO_6000)}


def region_list(gpu: Gpu) -> str:
    return ", ".join(
        f"{name} (by invitation only)" if "invitation" in where else name
        for name, where in sorted(gpu.regions.items())
    )
