"""Deploy the chat to Cloud Run with one command.

    python -m deploy.deploy --project P --region R [--dry-run] [--routing single|per-family]
    python -m deploy.deploy --project P --region R --teardown | --budget-alert USD

It checks billing and the GPU quota first (deploy/preflight.py), builds both images with Cloud
Build (as its own service account) into Artifact Registry, deploys the private GPU backend
(Ollama on an NVIDIA L4) and the public UI, lets only the UI's service account invoke the
backend, keeps the share-link key in Secret Manager, and prints the demo URL. `--teardown`
deletes all of it; `--budget-alert` only adds a monthly budget alert.

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
from deploy.preflight import GPU_QUOTA_ID, GPU_QUOTA_SERVICE, PreflightFailed, run_check

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

# Regions where Cloud Run offers NVIDIA L4 GPUs, from Google's GPU pages for Cloud Run
# (cloud.google.com/run/docs/configuring/services/gpu and .../workerpools/gpu), checked when
# this was written. The latest version marks us-central1 and asia-south1 "by invitation only"
# for L4. Google adds regions over time: --skip-region-check deploys elsewhere at your own risk.
L4_REGIONS: dict[str, str] = {
    "asia-south1": "Mumbai, by invitation only",
    "asia-southeast1": "Singapore",
    "europe-west1": "Belgium",
    "europe-west4": "Netherlands",
    "us-central1": "Iowa, by invitation only for L4 in Google's latest list",
    "us-east4": "Northern Virginia",
}

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


def startup_probe() -> str:
    return (
        f"--startup-probe=tcpSocket.port={SERVING_PORT},"
        f"initialDelaySeconds=0,periodSeconds={PROBE_PERIOD_SECONDS},"
        f"timeoutSeconds={PROBE_TIMEOUT_SECONDS},failureThreshold={PROBE_FAILURE_THRESHOLD}"
    )


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
    builds). The region itself was checked against L4_REGIONS when parsing the arguments."""
    p, r = config.project_flag, config.region_flag
    return [
        Step(("gcloud", "services", "enable", *PREFLIGHT_APIS, p)),
        Step(
            ("gcloud", "billing", "projects", "describe", config.project, "--format=json"),
            preflight=("billing", p),
        ),
        Step(
            ("gcloud", "beta", "quotas", "info", "describe", GPU_QUOTA_ID,
             f"--service={GPU_QUOTA_SERVICE}", p, "--format=json"),
            # Every GPU service of the deploy draws from the same regional quota.
            preflight=("gpu-quota", p, r, f"--need={config.max_instances * len(targets)}"),
        ),
    ]  # fmt: skip


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
    ]  # fmt: skip


def build_flags(config: Config) -> tuple[str, ...]:
    """Every image build runs as the build account, its source staged in the build bucket."""
    build_sa = config.service_account("build")
    return (
        f"--service-account=projects/{config.project}/serviceAccounts/{build_sa}",
        f"--gcs-source-staging-dir={config.build_bucket}/source",
    )


def build_backend_images(config: Config, targets: Sequence[Backend]) -> list[Step]:
    """One GPU image per backend with its models baked in (deploy/cloudbuild-llm.yaml)."""
    steps: list[Step] = []
    for backend in targets:
        substitutions = (
            f"_IMAGE={backend.image},_CACHE={backend.cache_image},"
            f"{model_substitutions(backend.models)},_NUM_PARALLEL={OLLAMA_NUM_PARALLEL}"
        )
        steps.append(
            Step(
                ("gcloud", "builds", "submit", str(REPO_ROOT),
                 f"--config={REPO_ROOT / 'deploy' / 'cloudbuild-llm.yaml'}",
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
    return [
        Step(
            ("gcloud", "run", "deploy", backend.service, f"--image={backend.image}", p, r,
             "--gpu=1", "--gpu-type=nvidia-l4", "--no-gpu-zonal-redundancy",
             "--cpu=8", "--memory=32Gi", "--no-cpu-throttling",
             f"--concurrency={OLLAMA_NUM_PARALLEL}",
             f"--max-instances={config.max_instances}",
             f"--min-instances={config.min_instances}",
             f"--timeout={REQUEST_TIMEOUT_SECONDS}",
             f"--port={SERVING_PORT}", startup_probe(),
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
    baked = [m.tag for m in production_models()]
    env = {
        "LLM_AUTH": "google",
        "LLM_ALLOWED_MODELS": ",".join(baked),
        "LLM_VOTES": "firestore",
        "GOOGLE_CLOUD_PROJECT": config.project,  # the Firestore client's project
    }
    if config.max_instances > 1:
        # The UI shares each model's slots out fairly between clients (ui/turn/fair_slots.py);
        # by default one instance's worth (LLM_GPU_CONCURRENCY = OLLAMA_NUM_PARALLEL).
        env["LLM_MODEL_SLOTS"] = str(OLLAMA_NUM_PARALLEL * config.max_instances)
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


def region_list() -> str:
    return ", ".join(
        f"{name} (by invitation only)" if "invitation" in where else name
        for name, where in sorted(L4_REGIONS.items())
    )


def parse_args(argv: Sequence[str]) -> tuple[Config, argparse.Namespace]:
    parser = argparse.ArgumentParser(
        prog="python -m deploy.deploy",
        description="Build and deploy the chat (GPU backend + UI) to Cloud Run.",
    )
    parser.add_argument("--project", default="", help="Google Cloud project id (required)")
    parser.add_argument("--region", default="", help="a Cloud Run region with L4 GPUs")
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
        help="deploy to a region missing from the known L4 list",
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
    region = args.region.strip()
    if not region:
        raise DeployError(
            f"missing region: pass REGION=<region> to `make deploy` (or --region); "
            f"Cloud Run L4 GPU regions: {region_list()}"
        )
    if region not in L4_REGIONS and not args.skip_region_check:
        raise DeployError(
            f"region {region!r} does not offer Cloud Run NVIDIA L4 GPUs. "
            f"Choose one of: {region_list()} "
            "(or pass --skip-region-check if Google has added it since)"
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
        if "invitation" in L4_REGIONS.get(config.region, ""):
            print(
                f"deploy: note: {config.region} offers L4 GPUs by invitation only; if the "
                "backend deploy is refused, use europe-west1, europe-west4, us-east4 or "
                "asia-southeast1",
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
