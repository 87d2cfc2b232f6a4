"""Checks the deploy runs before any build, on the JSON output of a gcloud command.

    gcloud billing projects describe P --format=json \
      | python3 -m deploy.preflight billing --project=P
    gcloud beta quotas info describe NvidiaL4GpuAllocNoZonalRedundancyPerProjectRegion \
        --service=run.googleapis.com --project=P --format=json \
      | python3 -m deploy.preflight gpu-quota --project=P --region=R --need=N

Each check exits 0 when the project is ready and otherwise prints what to request and where
(exit 1). deploy.py runs the same functions in process on the captured output; its dry-run
script pipes into this module, so the printed script checks exactly the same things.

The GPU choice itself (region, instance shape) is checked before any command runs:
check_gpu_region() and check_gpu_shape(), on the facts in deploy/gpus.py.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any

from deploy.gpus import L4_QUOTA_ID, L4_QUOTA_NAME, Gpu, region_list

# Cloud Run's quota for L4 GPUs without zonal redundancy (the deploy passes
# --no-gpu-zonal-redundancy); Google grants none by default.
GPU_QUOTA_SERVICE = "run.googleapis.com"
GPU_QUOTA_ID = L4_QUOTA_ID
GPU_QUOTA_NAME = L4_QUOTA_NAME


class PreflightFailed(Exception):
    """The project is not ready; the message says what to request and where."""


def parse(output: str, what: str) -> Any:
    try:
        return json.loads(output)
    except json.JSONDecodeError:
        raise PreflightFailed(f"could not read {what} (expected JSON): {output[:200]!r}") from None


def check_billing(output: str, project: str) -> None:
    info = parse(output, "the project's billing information")
    if not isinstance(info, dict) or info.get("billingEnabled") is not True:
        raise PreflightFailed(
            f"billing is not enabled for project {project}: Cloud Run GPUs, Cloud Build and "
            "Artifact Registry need it. Link a billing account at "
            f"https://console.cloud.google.com/billing/linkedaccount?project={project} "
            f"(or `gcloud billing projects link {project} --billing-account=ACCOUNT_ID`)"
        )


def gpu_quota(info: Any, region: str) -> int:
    """The quota value that applies in `region`: its own dimension, else the default one."""
    default = 0
    for entry in info.get("dimensionsInfos", []) if isinstance(info, dict) else []:
        dimensions = entry.get("dimensions") or {}
        value = int((entry.get("details") or {}).get("value", 0))
        if dimensions.get("region") == region:
            return value
        if not dimensions:
            default = value
    return default


def check_gpu_quota(output: str, project: str, region: str, need: int) -> None:
    have = gpu_quota(parse(output, f"quota {GPU_QUOTA_ID}"), region)
    if have < need:
        raise PreflightFailed(
            f"project {project} may run {have} Cloud Run L4 GPU(s) in {region}, the deploy "
            f"needs {need} (--max-instances per GPU service). Request the quota "
            f'"{GPU_QUOTA_NAME}" ({GPU_QUOTA_SERVICE}, {GPU_QUOTA_ID}, region={region}) at '
            f"https://console.cloud.google.com/iam-admin/quotas?project={project} or with "
            f"`gcloud beta quotas preferences create --service={GPU_QUOTA_SERVICE} "
            f"--quota-id={GPU_QUOTA_ID} --dimensions=region={region} --preferred-value={need} "
            f"--project={project} --email=YOU@EXAMPLE.COM`; Google answers within days, "
            "before any build runs."
        )


def check_gpu_region(gpu: Gpu, region: str) -> None:
    if region not in gpu.regions:
        raise PreflightFailed(
            f"region {region!r} does not offer Cloud Run {gpu.label} GPUs "
            f"(--gpu-type {gpu.gcloud_name}). Choose one of: {region_list(gpu)} "
            "(or pass --skip-region-check if Google has added it since)"
        )


def check_gpu_shape(gpu: Gpu, cpu: int, memory_gib: int) -> None:
    """Cloud Run refuses a GPU instance below the GPU's minimum; say so before any build."""
    if cpu < gpu.min_cpu or memory_gib < gpu.min_memory_gib:
        raise PreflightFailed(
            f"{cpu} vCPU and {memory_gib} GiB is below what Cloud Run requires with "
            f"{gpu.label}: at least {gpu.min_cpu} vCPU and {gpu.min_memory_gib} GiB "
            f"(default for --gpu-type {gpu.gcloud_name}: --backend-cpu {gpu.cpu} "
            f"--backend-memory {gpu.memory_gib})"
        )


def run_check(argv: Sequence[str], output: str) -> None:
    """Run the check named by argv (this module's command line) on a gcloud command's output."""
    parser = argparse.ArgumentParser(prog="python3 -m deploy.preflight")
    sub = parser.add_subparsers(dest="check", required=True)
    billing = sub.add_parser("billing")
    billing.add_argument("--project", required=True)
    quota = sub.add_parser("gpu-quota")
    quota.add_argument("--project", required=True)
    quota.add_argument("--region", required=True)
    quota.add_argument("--need", type=int, required=True)
    args = parser.parse_args(argv)
    if args.check == "billing":
        check_billing(output, args.project)
    else:
        check_gpu_quota(output, args.project, args.region, args.need)


def main(argv: Sequence[str] | None = None) -> int:
    try:
        run_check(sys.argv[1:] if argv is None else argv, sys.stdin.read())
    except PreflightFailed as exc:
        print(f"deploy: preflight: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
