"""Deploy the chat to Cloud Run with one command.

    python -m deploy.deploy --project P --region R [--dry-run] [--routing single|per-family]
        [--backend ollama|vllm] [--gpu-type nvidia-l4|nvidia-rtx-pro-6000]
    python -m deploy.deploy --project P --region R --teardown | --budget-alert USD

It checks billing and the GPU quota first (deploy/preflight.py), builds both images with Cloud
Build (as its own service account) into Artifact Registry, deploys the private GPU backend
(Ollama, or vLLM with `--backend vllm`, on the GPU of deploy/gpus.py that `--gpu-type` names)
and the public UI, lets only the UI's service account invoke the backend, keeps the share-link
key in Secret Manager, and prints the demo URL. `--teardown` deletes all of it;
`--budget-alert` only adds a monthly budget alert.

Every step is a gcloud command. `--dry-run` prints them as a bash script, shell-quoted and one
per line, instead of running them; the real run executes exactly the same steps through
subprocess. Values only known after a step (service URLs) appear as ${VARIABLES} in the dry
run and are filled in from that step's output in the real run.
"""

from __future__ import annotations

import argparse
import json
import re
import secrets
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from catalog import production_models
from deploy.gpus import GPUS, L4, Gpu, region_list
from deploy.preflight import (
    GPU_QUOTA_ID,
    GPU_QUOTA_SERVICE,
    PreflightFailed,
    check_gpu_region,
    check_gpu_shape,
    run_check,
)

REPO_ROOT = Path(__file__).resolve().parents[1]

# Parallel requests per loaded model. Dockerfile.llm's `ARG OLLAMA_NUM_PARALLEL` default must
# equal it (tests/test_deploy.py checks); every build passes it explicitly, and the backend's
# Cloud Run --concurrency is the same number, so Cloud Run never sends an instance more
# requests than one model can run at once (the rest wait in Cloud Run or go to a new instance).
OLLAMA_NUM_PARALLEL = 4
SERVING_PORT = 8080  # OLLAMA_HOST in Dockerfile.llm, Cloud Run's container port
# Startup probe: TCP on the container port, every 2 s for up to 240 s. Ollama listens a second
# or two after the container starts; the instance then takes traffic while the entrypoint loads
# the models, the requested one first (deploy/llm-entrypoint.sh, deploy/README.md "Cold start").
PROBE_PERIOD_SECONDS = 2
PROBE_TIMEOUT_SECONDS = 1
PROBE_FAILURE_THRESHOLD = 120
# Build slots of Dockerfile.llm (ARG MODEL_1..MODEL_3, one image layer each); "none" = unused.
MODEL_SLOTS = 3
NO_MODEL = "none"
# Long enough for the longest stream (max tokens on a slow, busy instance).
REQUEST_TIMEOUT_SECONDS = 3600
# Requests one UI instance (1 vCPU) takes before Cloud Run starts another: the concurrency
# benchmark measured 80 streams on one UI core at p95 18 ms of added time to first token
# (bench/README.md, bench.concurrency, 2026-11-28); each streaming reply holds one request.
# Votes live in Firestore and share links carry their content, so no state is per instance
# and the UI can scale out (deploy/README.md, "Scaling the UI").
UI_CONCURRENCY = 80
UI_MAX_INSTANCES = 5

# The vLLM backend (--backend vllm), as Google's notebook serves Gemma 3 on Cloud Run
# (GoogleCloudPlatform/generative-ai, open-models/serving/cloud_run_vllm_gemma3_inference.ipynb:
# google/gemma-3-4b-it baked into the image, --max-num-seqs=4, --max-model-len 32768, 8 vCPU,
# 32 GiB, one L4). One model per server; it is served under its catalog tag, so the UI's
# labels, allow-list and families apply to it as to the Ollama model.
BACKEND_KINDS = ("ollama", "vllm")
VLLM_MODEL = "google/gemma-3-4b-it"
VLLM_SERVED_MODEL = "gemma3:4b"
# Sequences vLLM runs at once; Cloud Run --concurrency is the same number (as for Ollama).
VLLM_MAX_NUM_SEQS = 4
VLLM_MAX_MODEL_LEN = 32768
# vLLM listens only once the model is loaded; /health then answers 200. HTTP probe every 5 s
# for up to 240 s, the longest Cloud Run's default TCP startup probe waits (the notebook's).
VLLM_HEALTH_PATH = "/health"
VLLM_PROBE_PERIOD_SECONDS = 5
VLLM_PROBE_TIMEOUT_SECONDS = 4
VLLM_PROBE_FAILURE_THRESHOLD = 48

# Enabled first: the preflight checks read billing and quota through them, and neither needs
# billing itself (enabling Cloud Run does).
PREFLIGHT_APIS = ("cloudbilling.googleapis.com", "cloudquotas.googleapis.com")
APIS = (
    "run.googleapis.com",
    "cloudbuild.googleapis.com",
    "artifactregistry.googleapis.com",
    "secretmanager.googleapis.com",
    "iam.googleapis.com",
    "storage.googleapis.com",
    "firestore.googleapis.com",  # the vote store (LLM_VOTES=firestore)
)
# The UI's service account reads and writes votes; datastore.user is the narrowest
# predefined role with document read/write, and it grants no admin rights.
UI_ROLE_FIRESTORE = "roles/datastore.user"
# What the build's own service account may do, and nothing else (deploy/README.md, "Cloud Build").
BUILD_ROLES_PROJECT = ("roles/logging.logWriter",)  # build logs go to Cloud Logging only
BUILD_ROLE_REPOSITORY = "roles/artifactregistry.writer"  # push the images, this repository only
BUILD_ROLE_BUCKET = "roles/storage.objectViewer"  # read the uploaded source, this bucket only

# The deploy's service accounts: (name suffix, display name).
SERVICE_ACCOUNTS = (
    ("backend", "LLM backend (no roles)"),
    ("ui", "LLM chat UI"),
    ("build", "LLM chat image builds"),
)

# Local timeouts for each gcloud call (they must end; Cloud Build has its own limit too).
BUILD_TIMEOUT_SECONDS = 3 * 3600
DEPLOY_TIMEOUT_SECONDS = 45 * 60
COMMAND_TIMEOUT_SECONDS = 10 * 60

PROJECT_RE = re.compile(r"^[a-z][a-z0-9-]{4,28}[a-z0-9]$")
PREFIX_RE = re.compile(r"^[a-z][a-z0-9-]{0,12}[a-z0-9]$")
TAG_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
VARIABLE_RE = re.compile(r"\$\{([A-Z][A-Z0-9_]*)\}")

# Generates the share-link key on the deployer's machine; the value only ever travels on stdin.
SECRET_GENERATOR = ("python3", "-c", 'import secrets; print(secrets.token_urlsafe(32), end="")')
# The dry-run script pipes a preflight command's JSON into this (run from the repository root).
PREFLIGHT_COMMAND = ("python3", "-m", "deploy.preflight")


class DeployError(Exception):
    """Bad input; the message says what to pass instead (exit status 2)."""


class StepFailed(DeployError):
    """A gcloud step failed or timed out (exit status 1)."""


# --- the plan: a list of steps, printed (dry run) or executed (real run) ------------------


@dataclass(frozen=True)
class Step:
    """One gcloud command.

    unless: a check command; when it succeeds the step is skipped (create-if-missing).
    only_if: a check command; the step runs only when it succeeds (delete-if-present).
    capture: store the command's stdout in this variable for later steps (${NAME}); it must
      start with capture_prefix.
    secret_stdin: feed a freshly generated random key on stdin (never in argv or output).
    preflight: a deploy.preflight command line that must accept the command's output.
    """

    argv: tuple[str, ...]
    timeout: float = COMMAND_TIMEOUT_SECONDS
    unless: tuple[str, ...] | None = None
    capture: str | None = None
    secret_stdin: bool = False
    only_if: tuple[str, ...] | None = None
    capture_prefix: str = "https://"
    preflight: tuple[str, ...] | None = None


@dataclass(frozen=True)
class Say:
    """A message for the person deploying (the demo URL at the end)."""

    text: str


@dataclass
class Plan:
    steps: list[Step | Say] = field(default_factory=list)

    def run(
        self,
        *argv: str,
        timeout: float = COMMAND_TIMEOUT_SECONDS,
        unless: tuple[str, ...] | None = None,
        capture: str | None = None,
        secret_stdin: bool = False,
        only_if: tuple[str, ...] | None = None,
        capture_prefix: str = "https://",
        preflight: tuple[str, ...] | None = None,
    ) -> None:
        self.steps.append(
            Step(argv, timeout, unless, capture, secret_stdin, only_if, capture_prefix, preflight)
        )

    def say(self, text: str) -> None:
        self.steps.append(Say(text))


def shell_word(arg: str) -> str:
    """Quote one argument for bash; ${VARIABLES} stay expandable (inside double quotes)."""
    if not VARIABLE_RE.search(arg):
        return shlex.quote(arg)
    parts: list[str] = []
    last = 0
    for match in VARIABLE_RE.finditer(arg):
        literal = arg[last : match.start()]
        parts.append(re.sub(r'(["\\$`])', r"\\\1", literal))
        parts.append(match.group(0))
        last = match.end()
    parts.append(re.sub(r'(["\\$`])', r"\\\1", arg[last:]))
    return '"' + "".join(parts) + '"'


def shell_command(argv: Sequence[str]) -> str:
    return " ".join(shell_word(arg) for arg in argv)


def render(plan: Plan) -> str:
    """The plan as a bash script: what --dry-run prints."""
    lines = ["#!/usr/bin/env bash", "set -euo pipefail"]
    for step in plan.steps:
        if isinstance(step, Say):
            lines.append(f"echo {shell_word(step.text)}")
            continue
        line = shell_command(step.argv)
        if step.secret_stdin:
            line = f"{shell_command(SECRET_GENERATOR)} | {line}"
        if step.preflight:
            line = f"{line} | {shell_command(PREFLIGHT_COMMAND + step.preflight)}"
        if step.capture:
            line = f"{step.capture}=$({line})"
        if step.unless:
            line = f"{shell_command(step.unless)} >/dev/null 2>&1 || {line}"
        if step.only_if:
            line = f"if {shell_command(step.only_if)} >/dev/null 2>&1; then {line}; fi"
        lines.append(line)
    return "\n".join(lines) + "\n"


def substitute(arg: str, values: dict[str, str]) -> str:
    def value(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in values:
            raise DeployError(f"internal error: ${{{name}}} used before a step produced it")
        return values[name]

    return VARIABLE_RE.sub(value, arg)


Runner = Callable[..., subprocess.CompletedProcess[str]]


def execute(plan: Plan, run: Runner = subprocess.run, log: Callable[[str], None] = print) -> None:
    """The real run: the same steps, through subprocess, stopping at the first failure."""
    values: dict[str, str] = {}
    for step in plan.steps:
        if isinstance(step, Say):
            log(substitute(step.text, values))
            continue
        for condition, skip_when_found in ((step.unless, True), (step.only_if, False)):
            if not condition:
                continue
            check = [substitute(a, values) for a in condition]
            found = run(
                check,
                check=False,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                timeout=COMMAND_TIMEOUT_SECONDS,
            )
            if (found.returncode == 0) == skip_when_found:
                why = "exists" if skip_when_found else "not found"
                log(f"+ {shell_command(check)}  # {why}, skipping: {shell_command(step.argv)}")
                break
        else:
            run_step(step, values, run, log)


def run_step(step: Step, values: dict[str, str], run: Runner, log: Callable[[str], None]) -> None:
    """Run one step (its skip checks already passed); captures and preflights its output."""
    argv = [substitute(a, values) for a in step.argv]
    log(f"+ {shell_command(argv)}")
    try:
        result = run(
            argv,
            check=True,
            text=True,
            timeout=step.timeout,
            input=secrets.token_urlsafe(32) if step.secret_stdin else None,
            stdout=subprocess.PIPE if step.capture or step.preflight else None,
        )
    except subprocess.CalledProcessError as exc:
        raise StepFailed(
            f"step failed with exit status {exc.returncode}: {shell_command(argv)}"
        ) from None
    except subprocess.TimeoutExpired:
        raise StepFailed(
            f"step did not finish within {step.timeout:.0f}s: {shell_command(argv)}"
        ) from None
    if step.preflight:
        try:
            run_check(step.preflight, result.stdout or "")
        except PreflightFailed as exc:
            raise StepFailed(f"preflight: {exc}") from None
        log(f"  preflight {step.preflight[0]}: ok")
    if step.capture:
        output = (result.stdout or "").strip()
        if not output.startswith(step.capture_prefix):
            raise StepFailed(
                f"expected {step.capture_prefix}... from {shell_command(argv)}, "
                f"got {output[:200]!r}"
            )
        values[step.capture] = output


# --- what to deploy -------------------------------------------------------------------------


@dataclass(frozen=True)
class Config:
    project: str
    region: str
    routing: str = "single"
    backend: str = "ollama"  # one of BACKEND_KINDS
    gpu: Gpu = L4
    backend_cpu: int = L4.cpu
    backend_memory_gib: int = L4.memory_gib
    gpu_price_per_hour: float | None = None  # None: the UI's default (the L4 instance's)
    hf_token_secret: str = ""  # vLLM builds: the Secret Manager secret with a Hugging Face token
    prefix: str = "llm-chat"
    tag: str = "latest"
    max_instances: int = 1
    min_instances: int = 0
    ui_max_instances: int = UI_MAX_INSTANCES
    rotate_share_secret: bool = False

    @property
    def registry(self) -> str:
        return f"{self.region}-docker.pkg.dev/{self.project}/{self.prefix}"

    def service_account(self, role: str) -> str:
        return f"{self.prefix}-{role}@{self.project}.iam.gserviceaccount.com"

    @property
    def secret(self) -> str:
        return f"{self.prefix}-share-secret"

    @property
    def build_bucket(self) -> str:
        """Where `gcloud builds submit` uploads the source; only the build may read it."""
        return f"gs://{self.project}-{self.prefix}-build"

    @property
    def project_flag(self) -> str:
        return f"--project={self.project}"

    @property
    def region_flag(self) -> str:
        return f"--region={self.region}"

    @property
    def ui_service(self) -> str:
        return f"{self.prefix}-ui"

    @property
    def ui_image(self) -> str:
        return f"{self.registry}/ui:{self.tag}"

    @property
    def backend_concurrency(self) -> int:
        """Requests one GPU instance runs at once: Cloud Run's --concurrency for the backend."""
        return VLLM_MAX_NUM_SEQS if self.backend == "vllm" else OLLAMA_NUM_PARALLEL


@dataclass(frozen=True)
class Backend:
    """One GPU service: its name, image, baked models and the variable holding its URL."""

    family: str | None  # None: the single backend serving every model
    service: str
    image: str
    models: tuple[str, ...]
    url_variable: str

    @property
    def cache_image(self) -> str:
        """The previous build, whose unchanged model layers the next build reuses."""
        return self.image.rsplit(":", 1)[0] + ":buildcache"


def families() -> list[str]:
    """Model families of the production models, in catalog order."""
    seen: list[str] = []
    for spec in production_models():
        if spec.family not in seen:
            seen.append(spec.family)
    return seen


def backends(config: Config) -> list[Backend]:
    models = production_models()
    if config.backend == "vllm":
        return [
            Backend(
                family=None,
                service=f"{config.prefix}-backend",
                image=f"{config.registry}/backend-vllm:{config.tag}",
                models=(VLLM_SERVED_MODEL,),
                url_variable="BACKEND_URL",
            )
        ]
    if config.routing == "single":
        return [
            Backend(
                family=None,
                service=f"{config.prefix}-backend",
                image=f"{config.registry}/backend:{config.tag}",
                models=tuple(m.tag for m in models),
                url_variable="BACKEND_URL",
            )
        ]
    return [
        Backend(
            family=family,
            service=f"{config.prefix}-backend-{family}",
            image=f"{config.registry}/backend-{family}:{config.tag}",
            models=tuple(m.tag for m in models if m.family == family),
            url_variable=f"BACKEND_URL_{family.upper()}",
        )
        for family in families()
    ]


def env_vars_flag(env: dict[str, str]) -> str:
    """--set-env-vars; values with commas (JSON) need gcloud's alternate delimiter syntax."""
    if any("," in value for value in env.values()):
        return "--set-env-vars=^;^" + ";".join(f"{k}={v}" for k, v in env.items())
    return "--set-env-vars=" + ",".join(f"{k}={v}" for k, v in env.items())


def startup_probe(config: Config) -> str:
    if config.backend == "vllm":
        return (
            f"--startup-probe=httpGet.path={VLLM_HEALTH_PATH},httpGet.port={SERVING_PORT},"
            f"initialDelaySeconds=0,periodSeconds={VLLM_PROBE_PERIOD_SECONDS},"
            f"timeoutSeconds={VLLM_PROBE_TIMEOUT_SECONDS},"
            f"failureThreshold={VLLM_PROBE_FAILURE_THRESHOLD}"
        )
    return (
        f"--startup-probe=tcpSocket.port={SERVING_PORT},"
        f"initialDelaySeconds=0,periodSeconds={PROBE_PERIOD_SECONDS},"
        f"timeoutSeconds={PROBE_TIMEOUT_SECONDS},failureThreshold={PROBE_FAILURE_THRESHOLD}"
    )


def vllm_args() -> list[str]:
    """vLLM's serving flags, the Cloud Run container's args (Dockerfile.vllm's ENTRYPOINT is
    the OpenAI-compatible server); the notebook's, plus the port and the served name."""
    return [
        "--host=0.0.0.0",
        f"--port={SERVING_PORT}",
        f"--model={VLLM_MODEL}",
        f"--served-model-name={VLLM_SERVED_MODEL}",
        f"--max-num-seqs={VLLM_MAX_NUM_SEQS}",
        f"--max-model-len={VLLM_MAX_MODEL_LEN}",
    ]


def model_substitutions(models: Sequence[str]) -> str:
    """_MODEL_1.._MODEL_3 for cloudbuild-llm.yaml: one Dockerfile.llm build slot per model."""
    if len(models) > MODEL_SLOTS:
        raise DeployError(
            f"{len(models)} models for one GPU image, but Dockerfile.llm has {MODEL_SLOTS} "
            "model slots: add a slot (ARG MODEL_n + RUN) to Dockerfile.llm"
        )
    slots = [*models, *[NO_MODEL] * (MODEL_SLOTS - len(models))]
    return ",".join(f"_MODEL_{i}={tag}" for i, tag in enumerate(slots, start=1))


# --- the deploy, step by step -------------------------------------------------------------


def build_plan(config: Config) -> Plan:
    """The deploy's steps in order; each step function returns its gcloud commands."""
    targets = backends(config)
    return Plan(
        steps=[
            *check_billing_and_gpu_quota(config, targets),
            *enable_apis(config),
            *create_image_repository(config),
            *create_build_bucket(config),
            *create_service_accounts(config),
            *grant_build_account(config),
            *build_backend_images(config, targets),
            *build_ui_image(config),
            *deploy_backends(config, targets),
            *create_vote_store(config),
            *create_share_secret(config),
            *deploy_ui(config, targets),
            *set_ui_public_url(config),
            Say("Demo URL: ${UI_URL}"),
        ]
    )


def check_billing_and_gpu_quota(config: Config, targets: Sequence[Backend]) -> list[Step]:
    """Preflight: nothing is built before the project can run what the build produces (a
    missing GPU quota would otherwise surface only at the backend deploy, after an hour of
    builds). The region and the instance shape were checked against deploy/gpus.py when
    parsing the arguments."""
    p, r = config.project_flag, config.region_flag
    steps = [
        Step(("gcloud", "services", "enable", *PREFLIGHT_APIS, p)),
        Step(
            ("gcloud", "billing", "projects", "describe", config.project, "--format=json"),
            preflight=("billing", p),
        ),
    ]
    if config.gpu.quota_checked:
        steps.append(
            Step(
                ("gcloud", "beta", "quotas", "info", "describe", GPU_QUOTA_ID,
                 f"--service={GPU_QUOTA_SERVICE}", p, "--format=json"),
                # Every GPU service of the deploy draws from the same regional quota.
                preflight=("gpu-quota", p, r, f"--need={config.max_instances * len(targets)}"),
            )
        )  # fmt: skip
    return steps


def enable_apis(config: Config) -> list[Step]:
    return [Step(("gcloud", "services", "enable", *APIS, config.project_flag))]


def create_image_repository(config: Config) -> list[Step]:
    p = config.project_flag
    return [
        Step(
            ("gcloud", "artifacts", "repositories", "create", config.prefix,
             "--repository-format=docker", f"--location={config.region}",
             "--description=serverless-llm-chat images", p),
            unless=("gcloud", "artifacts", "repositories", "describe", config.prefix,
                    f"--location={config.region}", p),
        )
    ]  # fmt: skip


def create_build_bucket(config: Config) -> list[Step]:
    p = config.project_flag
    return [
        Step(
            ("gcloud", "storage", "buckets", "create", config.build_bucket,
             f"--location={config.region}", "--uniform-bucket-level-access", p),
            unless=("gcloud", "storage", "buckets", "describe", config.build_bucket, p),
        )
    ]  # fmt: skip


def create_service_accounts(config: Config) -> list[Step]:
    """Service accounts first: IAM needs a moment to know them before the role bindings of
    the later steps."""
    p = config.project_flag
    return [
        Step(
            ("gcloud", "iam", "service-accounts", "create", f"{config.prefix}-{role}",
             f"--display-name={name}", p),
            unless=("gcloud", "iam", "service-accounts", "describe",
                    config.service_account(role), p),
        )
        for role, name in SERVICE_ACCOUNTS
    ]  # fmt: skip


def grant_build_account(config: Config) -> list[Step]:
    """Cloud Build runs as its own account with three narrow grants, instead of a default
    account whose roles differ between projects (deploy/README.md, "Cloud Build")."""
    p = config.project_flag
    build_member = f"--member=serviceAccount:{config.service_account('build')}"
    return [
        Step(
            ("gcloud", "storage", "buckets", "add-iam-policy-binding", config.build_bucket,
             build_member, f"--role={BUILD_ROLE_BUCKET}", p),
        ),
        Step(
            ("gcloud", "artifacts", "repositories", "add-iam-policy-binding", config.prefix,
             f"--location={config.region}", build_member, f"--role={BUILD_ROLE_REPOSITORY}", p),
        ),
        *(
            Step(
                ("gcloud", "projects", "add-iam-policy-binding", config.project, build_member,
                 f"--role={role}", "--condition=None", "--quiet"),
            )
            for role in BUILD_ROLES_PROJECT
        ),
        # The vLLM build reads the Hugging Face token, this one secret only (it fails here,
        # before any build, when the secret does not exist: deploy/README.md).
        *(
            [Step(
                ("gcloud", "secrets", "add-iam-policy-binding", config.hf_token_secret, p,
                 build_member, "--role=roles/secretmanager.secretAccessor", "--quiet"),
            )]
            if config.backend == "vllm" else []
        ),
    ]  # fmt: skip


def build_flags(config: Config) -> tuple[str, ...]:
    """Every image build runs as the build account, its source staged in the build bucket."""
    build_sa = config.service_account("build")
    return (
        f"--service-account=projects/{config.project}/serviceAccounts/{build_sa}",
        f"--gcs-source-staging-dir={config.build_bucket}/source",
    )


def build_backend_images(config: Config, targets: Sequence[Backend]) -> list[Step]:
    """One GPU image per backend with its models baked in: deploy/cloudbuild-llm.yaml (Ollama,
    with the GPU's Ollama pin) or deploy/cloudbuild-vllm.yaml."""
    steps: list[Step] = []
    for backend in targets:
        if config.backend == "vllm":
            build_config = "cloudbuild-vllm.yaml"
            substitutions = (
                f"_IMAGE={backend.image},_MODEL={VLLM_MODEL},"
                f"_HF_TOKEN_SECRET={config.hf_token_secret}"
            )
        else:
            build_config = "cloudbuild-llm.yaml"
            substitutions = (
                f"_IMAGE={backend.image},_CACHE={backend.cache_image},"
                f"{model_substitutions(backend.models)},_NUM_PARALLEL={OLLAMA_NUM_PARALLEL},"
                f"_OLLAMA_VERSION={config.gpu.ollama_version}"
            )
        steps.append(
            Step(
                ("gcloud", "builds", "submit", str(REPO_ROOT),
                 f"--config={REPO_ROOT / 'deploy' / build_config}",
                 f"--substitutions={substitutions}", *build_flags(config), config.project_flag),
                timeout=BUILD_TIMEOUT_SECONDS,
            )
        )  # fmt: skip
    return steps


def build_ui_image(config: Config) -> list[Step]:
    return [
        Step(
            ("gcloud", "builds", "submit", str(REPO_ROOT),
             f"--config={REPO_ROOT / 'deploy' / 'cloudbuild-ui.yaml'}",
             f"--substitutions=_IMAGE={config.ui_image}", *build_flags(config),
             config.project_flag),
            timeout=BUILD_TIMEOUT_SECONDS,
        )
    ]  # fmt: skip


def deploy_backends(config: Config, targets: Sequence[Backend]) -> list[Step]:
    return [step for backend in targets for step in deploy_backend(config, backend)]


def deploy_backend(config: Config, backend: Backend) -> list[Step]:
    """The private GPU service, its URL for the UI, and the UI's right to call it."""
    p, r = config.project_flag, config.region_flag
    # Ollama's settings live in its image; vLLM's serving flags are the container's args.
    args = ["--args=" + ",".join(vllm_args())] if config.backend == "vllm" else []
    return [
        Step(
            ("gcloud", "run", "deploy", backend.service, f"--image={backend.image}", p, r,
             "--gpu=1", f"--gpu-type={config.gpu.gcloud_name}", "--no-gpu-zonal-redundancy",
             f"--cpu={config.backend_cpu}", f"--memory={config.backend_memory_gib}Gi",
             "--no-cpu-throttling",
             f"--concurrency={config.backend_concurrency}",
             f"--max-instances={config.max_instances}",
             f"--min-instances={config.min_instances}",
             f"--timeout={REQUEST_TIMEOUT_SECONDS}",
             f"--port={SERVING_PORT}", startup_probe(config), *args,
             "--no-allow-unauthenticated",
             f"--service-account={config.service_account('backend')}",
             f"--labels=app={config.prefix},component=backend", "--quiet"),
            timeout=DEPLOY_TIMEOUT_SECONDS,
        ),
        service_url(config, backend.service, backend.url_variable),
        # Only the UI's identity may call the GPU service; nobody else, not even allUsers.
        Step(
            ("gcloud", "run", "services", "add-iam-policy-binding", backend.service, p, r,
             f"--member=serviceAccount:{config.service_account('ui')}",
             "--role=roles/run.invoker", "--quiet"),
        ),
    ]  # fmt: skip


def service_url(config: Config, service: str, variable: str) -> Step:
    """A deployed service's URL, captured into ${variable} for later steps."""
    return Step(
        ("gcloud", "run", "services", "describe", service, config.project_flag,
         config.region_flag, "--format=value(status.url)"),
        capture=variable,
    )  # fmt: skip


def create_vote_store(config: Config) -> list[Step]:
    """Votes: Firestore's (default) database in Native mode, in the services' region (every
    L4 region is a Firestore location), created once and kept across deploys."""
    p = config.project_flag
    return [
        Step(
            ("gcloud", "firestore", "databases", "create", f"--location={config.region}",
             "--type=firestore-native", p),
            unless=("gcloud", "firestore", "databases", "describe", "--database=(default)", p),
        ),
        Step(
            ("gcloud", "projects", "add-iam-policy-binding", config.project,
             f"--member=serviceAccount:{config.service_account('ui')}",
             f"--role={UI_ROLE_FIRESTORE}", "--condition=None", "--quiet"),
        ),
    ]  # fmt: skip


def create_share_secret(config: Config) -> list[Step]:
    """The share-link signing key: created once, kept across deploys (rotating it invalidates
    every link already shared) unless --rotate-share-secret asks for a new version."""
    p = config.project_flag
    return [
        Step(
            ("gcloud", "secrets", "create", config.secret, "--replication-policy=automatic", p),
            unless=("gcloud", "secrets", "describe", config.secret, p),
        ),
        Step(
            ("gcloud", "secrets", "versions", "add", config.secret, "--data-file=-", p),
            unless=None if config.rotate_share_secret else (
                "gcloud", "secrets", "versions", "describe", "latest",
                f"--secret={config.secret}", p,
            ),
            secret_stdin=True,
        ),
        Step(
            ("gcloud", "secrets", "add-iam-policy-binding", config.secret, p,
             f"--member=serviceAccount:{config.service_account('ui')}",
             "--role=roles/secretmanager.secretAccessor", "--quiet"),
        ),
    ]  # fmt: skip


def ui_environment(config: Config, targets: Sequence[Backend]) -> dict[str, str]:
    """The UI service's environment: auth, models, vote store and where the backends are."""
    # The UI offers exactly the baked models: it can fill its picker from this list while
    # a GPU backend is still scaled to zero.
    baked = [tag for backend in targets for tag in backend.models]
    env = {
        "LLM_AUTH": "google",
        "LLM_ALLOWED_MODELS": ",".join(baked),
        "LLM_VOTES": "firestore",
        "GOOGLE_CLOUD_PROJECT": config.project,  # the Firestore client's project
    }
    if config.backend == "vllm":
        env["LLM_BACKEND_API"] = "openai"  # vLLM speaks the OpenAI API, not Ollama's
    if config.gpu_price_per_hour is not None:
        env["LLM_GPU_PRICE_PER_HOUR"] = f"{config.gpu_price_per_hour:g}"  # the cost estimates
    if config.max_instances > 1:
        # The UI shares each model's slots out fairly between clients (ui/turn/fair_slots.py);
        # by default one instance's worth (LLM_GPU_CONCURRENCY, the backend's --concurrency).
        env["LLM_MODEL_SLOTS"] = str(config.backend_concurrency * config.max_instances)
    if config.routing == "single":
        env["LLM_BACKEND_URL"] = f"${{{targets[0].url_variable}}}"
    else:
        routes = {b.family: f"${{{b.url_variable}}}" for b in targets if b.family}
        env["LLM_BACKEND_ROUTES"] = json.dumps(routes, separators=(",", ":"))
        # Every family has its own route; the default URL only keeps the UI from ever
        # falling back to an embedded engine, which the UI image does not have.
        env["LLM_BACKEND_URL"] = f"${{{targets[0].url_variable}}}"
    return env


def deploy_ui(config: Config, targets: Sequence[Backend]) -> list[Step]:
    """The public UI service and its URL."""
    p, r = config.project_flag, config.region_flag
    return [
        Step(
            ("gcloud", "run", "deploy", config.ui_service, f"--image={config.ui_image}", p, r,
             "--allow-unauthenticated", f"--service-account={config.service_account('ui')}",
             env_vars_flag(ui_environment(config, targets)),
             f"--set-secrets=LLM_SHARE_SECRET={config.secret}:latest",
             "--cpu=1", "--memory=1Gi", f"--concurrency={UI_CONCURRENCY}",
             f"--max-instances={config.ui_max_instances}", "--min-instances=0",
             # Gradio keeps each session's queue and event stream in one process.
             "--session-affinity", f"--timeout={REQUEST_TIMEOUT_SECONDS}", "--cpu-boost",
             f"--labels=app={config.prefix},component=ui", "--quiet"),
            timeout=DEPLOY_TIMEOUT_SECONDS,
        ),
        service_url(config, config.ui_service, "UI_URL"),
    ]  # fmt: skip


def set_ui_public_url(config: Config) -> list[Step]:
    """Share links carry the public URL (TLS ends at Google's front end, so the request the
    UI sees may not say https)."""
    return [
        Step(
            ("gcloud", "run", "services", "update", config.ui_service, config.project_flag,
             config.region_flag, "--update-env-vars=LLM_PUBLIC_URL=${UI_URL}", "--quiet"),
            timeout=DEPLOY_TIMEOUT_SECONDS,
        )
    ]  # fmt: skip


def backend_services(config: Config) -> list[str]:
    """Every GPU service name either routing creates (teardown removes whichever exist)."""
    names = [f"{config.prefix}-backend"]
    names += [f"{config.prefix}-backend-{family}" for family in families()]
    return names


def teardown_plan(config: Config) -> Plan:
    """Delete everything build_plan creates; each step runs only if its resource exists."""
    p, r = f"--project={config.project}", f"--region={config.region}"
    plan = Plan()
    for service in [config.ui_service, *backend_services(config)]:
        plan.run(
            "gcloud", "run", "services", "delete", service, p, r, "--quiet",
            only_if=("gcloud", "run", "services", "describe", service, p, r),
        )  # fmt: skip
    # The repository holds every image and tag (backend*, ui, buildcache).
    plan.run(
        "gcloud", "artifacts", "repositories", "delete", config.prefix,
        f"--location={config.region}", p, "--quiet",
        only_if=("gcloud", "artifacts", "repositories", "describe", config.prefix,
                 f"--location={config.region}", p),
    )  # fmt: skip
    plan.run(
        "gcloud", "secrets", "delete", config.secret, p, "--quiet",
        only_if=("gcloud", "secrets", "describe", config.secret, p),
    )  # fmt: skip
    ui_sa = config.service_account("ui")
    plan.run(
        "gcloud", "projects", "remove-iam-policy-binding", config.project,
        f"--member=serviceAccount:{ui_sa}", f"--role={UI_ROLE_FIRESTORE}", "--condition=None",
        "--quiet",
        only_if=("gcloud", "iam", "service-accounts", "describe", ui_sa, p),
    )  # fmt: skip
    build_sa = config.service_account("build")
    for role in BUILD_ROLES_PROJECT:
        plan.run(
            "gcloud", "projects", "remove-iam-policy-binding", config.project,
            f"--member=serviceAccount:{build_sa}", f"--role={role}", "--condition=None",
            "--quiet",
            only_if=("gcloud", "iam", "service-accounts", "describe", build_sa, p),
        )  # fmt: skip
    for role, _ in SERVICE_ACCOUNTS:
        account = config.service_account(role)
        plan.run(
            "gcloud", "iam", "service-accounts", "delete", account, p, "--quiet",
            only_if=("gcloud", "iam", "service-accounts", "describe", account, p),
        )  # fmt: skip
    # The uploaded sources, then the bucket itself.
    plan.run(
        "gcloud", "storage", "rm", "--recursive", config.build_bucket, p,
        only_if=("gcloud", "storage", "buckets", "describe", config.build_bucket, p),
    )  # fmt: skip
    plan.say(
        "Removed the services, images, secret, service accounts and build bucket of "
        f"{config.prefix} in {config.project}/{config.region}. A budget made with "
        "--budget-alert stays on the billing account (Billing > Budgets & alerts). The "
        "battle votes stay in Firestore's (default) database; to delete them: gcloud "
        f"firestore databases delete --database='(default)' --project={config.project} "
        "(this deletes every collection in that database, not only the votes)."
    )
    return plan


def budget_plan(config: Config, amount: int) -> Plan:
    """A budget on the project's billing account that e-mails its billing admins at 50%,
    90% and 100% of `amount` US dollars a month (spent, not forecast)."""
    plan = Plan()
    plan.run(
        "gcloud", "billing", "projects", "describe", config.project,
        "--format=value(billingAccountName.basename())",
        capture="BILLING_ACCOUNT", capture_prefix="",
    )  # fmt: skip
    plan.run(
        "gcloud", "billing", "budgets", "create", "--billing-account=${BILLING_ACCOUNT}",
        f"--display-name={config.prefix} {config.project}", f"--budget-amount={amount}USD",
        f"--filter-projects=projects/{config.project}", "--calendar-period=month",
        "--threshold-rule=percent=0.5", "--threshold-rule=percent=0.9",
        "--threshold-rule=percent=1.0",
    )  # fmt: skip
    plan.say(f"Budget alert at {amount} USD a month for {config.project}.")
    return plan


# --- command line -----------------------------------------------------------------------------


def parse_args(argv: Sequence[str]) -> tuple[Config, argparse.Namespace]:
    parser = argparse.ArgumentParser(
        prog="python -m deploy.deploy",
        description="Build and deploy the chat (GPU backend + UI) to Cloud Run.",
    )
    parser.add_argument("--project", default="", help="Google Cloud project id (required)")
    parser.add_argument("--region", default="", help="a Cloud Run region with the GPU")
    parser.add_argument(
        "--dry-run", action="store_true", help="print the gcloud commands, run nothing"
    )
    parser.add_argument(
        "--routing",
        choices=("single", "per-family"),
        default="single",
        help="one GPU service for all models (default) or one per model family",
    )
    parser.add_argument(
        "--backend", choices=BACKEND_KINDS, default="ollama",
        help=f"GPU server: Ollama with the production models (default) or vLLM serving "
        f"{VLLM_MODEL} as {VLLM_SERVED_MODEL} (OpenAI API)",
    )  # fmt: skip
    parser.add_argument(
        "--gpu-type", choices=sorted(GPUS), default=L4.gcloud_name,
        help="Cloud Run GPU (deploy/README.md, \"Choosing the GPU\"; default nvidia-l4)",
    )  # fmt: skip
    parser.add_argument(
        "--backend-cpu", type=int, default=0,
        help="vCPU per GPU instance (default: the GPU's shape in deploy/gpus.py)",
    )  # fmt: skip
    parser.add_argument(
        "--backend-memory", type=int, default=0, metavar="GIB",
        help="memory per GPU instance in GiB (default: the GPU's shape)",
    )  # fmt: skip
    parser.add_argument(
        "--gpu-price-per-hour", type=float, default=None, metavar="USD",
        help="the GPU instance's price per hour for the UI's cost estimates "
        "(required with nvidia-rtx-pro-6000; the L4's is the UI's default)",
    )  # fmt: skip
    parser.add_argument(
        "--hf-token-secret", default="",
        help="Secret Manager secret with a Hugging Face read token, for --backend vllm "
        "(default: PREFIX-hf-token)",
    )  # fmt: skip
    parser.add_argument(
        "--max-instances", type=int, default=1,
        help="GPU instances per backend service (each needs one L4 of GPU quota; default 1)",
    )  # fmt: skip
    parser.add_argument(
        "--min-instances", type=int, default=0,
        help="GPU instances kept warm per backend (billed while idle; default 0)",
    )  # fmt: skip
    parser.add_argument(
        "--ui-max-instances", type=int, default=UI_MAX_INSTANCES,
        help=f"default {UI_MAX_INSTANCES} (votes are shared, so instances are interchangeable)",
    )  # fmt: skip
    parser.add_argument("--prefix", default="llm-chat", help="name prefix of every resource")
    parser.add_argument("--tag", default="", help="image tag (default: current UTC time)")
    parser.add_argument(
        "--rotate-share-secret", action="store_true",
        help="add a new share-link key version (invalidates existing share links)",
    )  # fmt: skip
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument(
        "--teardown", action="store_true",
        help="delete everything the deploy created (services, images, secret, accounts, bucket)",
    )  # fmt: skip
    mode.add_argument(
        "--budget-alert", type=int, default=0, metavar="USD",
        help="only create a monthly budget alert of USD dollars for the project",
    )  # fmt: skip
    parser.add_argument(
        "--skip-region-check", action="store_true",
        help="deploy to a region missing from the GPU's known region list",
    )  # fmt: skip
    args = parser.parse_args(argv)

    project = args.project.strip()
    if not project:
        raise DeployError(
            "missing Google Cloud project: pass PROJECT=<project-id> to `make deploy` "
            "(or --project <project-id> to python -m deploy.deploy)"
        )
    if not PROJECT_RE.match(project):
        raise DeployError(
            f"project {project!r} is not a Google Cloud project id (6-30 characters: "
            "lowercase letters, digits and hyphens, starting with a letter)"
        )
    gpu = GPUS[args.gpu_type]
    region = args.region.strip()
    if not region:
        raise DeployError(
            f"missing region: pass REGION=<region> to `make deploy` (or --region); "
            f"Cloud Run regions with {gpu.label}: {region_list(gpu)}"
        )
    cpu = args.backend_cpu or gpu.cpu
    memory_gib = args.backend_memory or gpu.memory_gib
    try:
        if not args.skip_region_check:
            check_gpu_region(gpu, region)
        check_gpu_shape(gpu, cpu, memory_gib)
    except PreflightFailed as exc:
        raise DeployError(str(exc)) from None
    if args.backend == "vllm" and gpu is not L4:
        raise DeployError(
            f"--backend vllm runs on nvidia-l4 only: its image pin (Dockerfile.vllm) is the one "
            f"checked against the L4's driver; use --backend ollama with {gpu.gcloud_name}"
        )
    if args.backend == "vllm" and args.routing != "single":
        raise DeployError(
            f"--backend vllm serves one model ({VLLM_SERVED_MODEL}) from one service: "
            "--routing per-family is for the Ollama backend"
        )
    if args.gpu_price_per_hour is None and not gpu.ui_default_price:
        raise DeployError(
            f"--gpu-price-per-hour is required with --gpu-type {gpu.gcloud_name}: the price of "
            f"one instance ({gpu.label}, {cpu} vCPU, {memory_gib} GiB) per hour in {region}, "
            "from https://cloud.google.com/run/pricing; the UI's cost estimates use it"
        )
    if args.gpu_price_per_hour is not None and not args.gpu_price_per_hour > 0:
        raise DeployError(
            f"--gpu-price-per-hour must be a positive amount of USD, got {args.gpu_price_per_hour}"
        )
    if not re.fullmatch(r"[a-z]+-[a-z]+[0-9]+", region):
        raise DeployError(f"region {region!r} is not a region name like us-central1")
    if not PREFIX_RE.match(args.prefix):
        raise DeployError(
            f"prefix {args.prefix!r} must be 2-14 lowercase letters, digits or hyphens, "
            "starting with a letter (it names services, service accounts and the secret)"
        )
    tag = args.tag or time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    if not TAG_RE.match(tag):
        raise DeployError(f"image tag {tag!r} may only contain letters, digits, '_', '.', '-'")
    for name, value, low in (
        ("--max-instances", args.max_instances, 1),
        ("--min-instances", args.min_instances, 0),
        ("--ui-max-instances", args.ui_max_instances, 1),
    ):
        if not low <= value <= 100:
            raise DeployError(f"{name} must be between {low} and 100, got {value}")
    if args.budget_alert < 0:
        raise DeployError(
            f"--budget-alert must be a positive amount of USD, got {args.budget_alert}"
        )
    if args.min_instances > args.max_instances:
        raise DeployError(
            f"--min-instances ({args.min_instances}) exceeds --max-instances ({args.max_instances})"
        )
    config = Config(
        project=project,
        region=region,
        routing=args.routing,
        backend=args.backend,
        gpu=gpu,
        backend_cpu=cpu,
        backend_memory_gib=memory_gib,
        gpu_price_per_hour=args.gpu_price_per_hour,
        hf_token_secret=args.hf_token_secret or f"{args.prefix}-hf-token",
        prefix=args.prefix,
        tag=tag,
        max_instances=args.max_instances,
        min_instances=args.min_instances,
        ui_max_instances=args.ui_max_instances,
        rotate_share_secret=args.rotate_share_secret,
    )
    return config, args


def main(argv: Sequence[str] | None = None) -> int:
    try:
        config, args = parse_args(sys.argv[1:] if argv is None else argv)
        if args.teardown:
            plan = teardown_plan(config)
        elif args.budget_alert:
            plan = budget_plan(config, args.budget_alert)
        else:
            plan = build_plan(config)
        if "invitation" in config.gpu.regions.get(config.region, ""):
            others = [r for r, where in config.gpu.regions.items() if "invitation" not in where]
            print(
                f"deploy: note: {config.region} offers {config.gpu.label} GPUs by invitation "
                f"only; if the backend deploy is refused, use {', '.join(sorted(others))}",
                file=sys.stderr,
            )
        if args.dry_run:
            sys.stdout.write(render(plan))
            return 0
        if shutil.which("gcloud") is None:
            raise DeployError(
                "gcloud not found: install the Google Cloud CLI "
                "(https://cloud.google.com/sdk/docs/install), run `gcloud auth login`, "
                "or use --dry-run to only print the commands"
            )
        execute(plan, log=lambda line: print(line, flush=True))
        return 0
    except StepFailed as exc:
        print(f"deploy: error: {exc}", file=sys.stderr)
        return 1
    except DeployError as exc:
        print(f"deploy: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
