"""The deploy's gcloud commands, checked by the real Google Cloud CLI (no string matching).

- Parse: every command `make deploy` emits (and every create-if-missing check), and those of
  `--teardown` and `--budget-alert`, is run by the real gcloud without credentials; each must
  get past argument parsing and stop at the missing account (exit 1), not at a usage error
  (exit 2).
- Request: the backend's and the UI's `gcloud run deploy` (plus the steps that read the URL,
  grant the invoker role and set the public URL) run against a local recording fake of the
  Cloud Run Admin API (devtools/fake_run_admin.py), and the tests assert on the Knative Service
  gcloud sends: for the default deploy (Ollama on an L4), `--backend vllm` and
  `--gpu-type nvidia-rtx-pro-6000`.

gcloud takes 2-5 s per command, so one module-scoped fixture runs everything once. Nothing
touches the user's gcloud configuration (CLOUDSDK_CONFIG is a temporary directory) or the
network (endpoint overrides point at the fake; its host names resolve to 127.0.0.1 only inside
gcloud's own Python, through a sitecustomize shim).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from deploy import deploy
from deploy.gpus import RTX_PRO_6000
from devtools.fake_run_admin import FAKE_DOMAIN, FakeRunAdmin, resolver_shim

ROOT = Path(__file__).resolve().parents[1]
GCLOUD = shutil.which("gcloud") or "/usr/bin/gcloud"
PROJECT = "demo-project"
REGION = "europe-west1"
BACKEND = "llm-chat-backend"
UI = "llm-chat-ui"
ROUTED_PREFIX = "routed"
# The other two backends, each deployed under its own prefix.
VLLM_PREFIX = "vllm-chat"
VLLM_ARGS = ("--backend", "vllm", "--prefix", VLLM_PREFIX)
RTX_PREFIX = "rtx-chat"
RTX_REGION = "europe-west4"  # offers both GPUs; europe-west1 has no RTX PRO 6000
RTX_ARGS = ("--gpu-type", "nvidia-rtx-pro-6000", "--gpu-price-per-hour", "6.5",
            "--region", RTX_REGION, "--prefix", RTX_PREFIX)  # fmt: skip
BACKEND_SA = f"llm-chat-backend@{PROJECT}.iam.gserviceaccount.com"
UI_SA = f"llm-chat-ui@{PROJECT}.iam.gserviceaccount.com"
NO_ACCOUNT = "do not currently have an active account selected"

pytestmark = pytest.mark.skipif(
    not Path(GCLOUD).exists(), reason="the Google Cloud CLI is not installed"
)


def plan_commands(*args: str) -> list[list[str]]:
    """Every gcloud argv of the deploy's dry-run script, create-if-missing checks included."""
    script = subprocess.run(
        [sys.executable, "-m", "deploy.deploy", "--project", PROJECT, "--region", REGION,
         "--tag", "t1", "--dry-run", *args],
        cwd=ROOT, capture_output=True, text=True, timeout=60, check=True,
    ).stdout  # fmt: skip
    commands = []
    for line in script.splitlines():
        if line.startswith(("#!", "set ", "echo ")):
            continue
        if line.split("=", 1)[0].isupper() and "=$(" in line:
            line = line.split("=$(", 1)[1].removesuffix(")")
        if line.startswith("if "):  # if CHECK >/dev/null 2>&1; then COMMAND; fi
            line = line.removeprefix("if ").removesuffix("; fi").replace("; then ", " || ")
        for part in line.split(" >/dev/null 2>&1 || "):
            part = part.split(" | python3 -m deploy.preflight ", 1)[0]  # output check
            part = part.split(" | ", 1)[-1]  # the generated secret is piped in
            commands.append(shlex.split(part))
    return commands


def find(commands: list[list[str]], *prefix: str) -> list[str]:
    (match,) = [c for c in commands if c[: len(prefix)] == list(prefix)]
    return match


@dataclass
class GcloudRun:
    fake: FakeRunAdmin
    parse_results: list[tuple[list[str], subprocess.CompletedProcess[str]]]
    control: subprocess.CompletedProcess[str]
    steps: dict[str, subprocess.CompletedProcess[str]]
    vllm_commands: list[list[str]]
    rtx_commands: list[list[str]]


def gcloud_env(config: Path, extra: dict[str, str] | None = None) -> dict[str, str]:
    config.mkdir(parents=True, exist_ok=True)
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("CLOUDSDK_", "GOOGLE_", "GCLOUD_"))
    }
    env.update(
        {
            "CLOUDSDK_CONFIG": str(config),
            "CLOUDSDK_CORE_DISABLE_PROMPTS": "1",
            "CLOUDSDK_CORE_DISABLE_USAGE_REPORTING": "1",
            "CLOUDSDK_COMPONENT_MANAGER_DISABLE_UPDATE_CHECK": "1",
            # On a Google Cloud CI runner, gcloud would otherwise find the VM's own account.
            "CLOUDSDK_CORE_CHECK_GCE_METADATA": "false",
            **(extra or {}),
        }
    )
    return env


def gcloud(argv: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    assert argv[0] == "gcloud", argv
    return subprocess.run(
        [GCLOUD, *argv[1:]],
        env=env,
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=180,
    )


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GcloudRun]:
    tmp = tmp_path_factory.mktemp("gcloud")
    commands = plan_commands()

    # 1. Parse: no credentials at all, so gcloud stops right after parsing its arguments. The
    # deploy, its teardown and the budget alert; values known only at run time filled in.
    vllm_commands, rtx_commands = plan_commands(*VLLM_ARGS), plan_commands(*RTX_ARGS)
    every = commands + plan_commands("--teardown") + plan_commands("--budget-alert", "100")
    every += vllm_commands + rtx_commands
    # gcloud is slow to start: one command per shape (the teardown's per-family backends
    # differ from the single backend by name only, the other backends' plans from the default
    # one by prefix and region except in their own steps; create-if-missing checks repeat).
    shapes: dict[tuple[str, ...], list[str]] = {}
    for argv in every:
        filled = [arg.replace("${BILLING_ACCOUNT}", "01A2B3-C4D5E6-F7A8B9") for arg in argv]
        shape = tuple(
            re.sub(r"llm-chat-backend-\w+", "llm-chat-backend",
                   re.sub(f"{VLLM_PREFIX}|{RTX_PREFIX}", "llm-chat", a).replace(RTX_REGION, REGION))
            for a in filled
        )  # fmt: skip
        shapes.setdefault(shape, filled)
    every = list(shapes.values())
    bare = gcloud_env(tmp / "config-without-account")
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(lambda argv: gcloud(argv, bare), every))
    # A command with an unknown flag must fail differently, or the check above proves nothing.
    control = gcloud([*find(commands, "gcloud", "run", "deploy", BACKEND), "--no-such-flag"], bare)

    # 2. Request: the deploy steps that shape the services, against the fake API.
    fake = FakeRunAdmin().start()
    shim = tmp / "resolver-shim"
    shim.mkdir()
    (shim / "sitecustomize.py").write_text(resolver_shim())
    token = tmp / "access-token"
    token.write_text("ya29.fake-access-token")
    env = gcloud_env(
        tmp / "config",
        {
            "CLOUDSDK_API_ENDPOINT_OVERRIDES_RUN": fake.endpoint,
            "CLOUDSDK_API_ENDPOINT_OVERRIDES_SERVICEUSAGE": fake.endpoint,
            "CLOUDSDK_AUTH_ACCESS_TOKEN_FILE": str(token),
            "CLOUDSDK_PYTHON_SITEPACKAGES": "1",
            "PYTHONPATH": str(shim),
        },
    )
    # Each deploy's plan by its prefix; ${BACKEND_URL} and ${UI_URL} as its describe steps
    # would capture them.
    plans = {"llm-chat": commands, VLLM_PREFIX: vllm_commands, RTX_PREFIX: rtx_commands}
    steps: dict[str, subprocess.CompletedProcess[str]] = {}
    for name, plan, prefix in (
        ("backend deploy", "llm-chat", ("run", "deploy", BACKEND)),
        ("backend url", "llm-chat", ("run", "services", "describe", BACKEND)),
        ("backend invoker", "llm-chat", ("run", "services", "add-iam-policy-binding", BACKEND)),
        ("ui deploy", "llm-chat", ("run", "deploy", UI)),
        ("ui public url", "llm-chat", ("run", "services", "update", UI)),
        ("vllm backend deploy", VLLM_PREFIX, ("run", "deploy", f"{VLLM_PREFIX}-backend")),
        ("vllm backend invoker", VLLM_PREFIX,
         ("run", "services", "add-iam-policy-binding", f"{VLLM_PREFIX}-backend")),
        ("vllm ui deploy", VLLM_PREFIX, ("run", "deploy", f"{VLLM_PREFIX}-ui")),
        ("rtx backend deploy", RTX_PREFIX, ("run", "deploy", f"{RTX_PREFIX}-backend")),
    ):  # fmt: skip
        backend_url, ui_url = fake.url_of(f"{plan}-backend"), fake.url_of(f"{plan}-ui")
        argv = [
            arg.replace("${BACKEND_URL}", backend_url).replace("${UI_URL}", ui_url)
            for arg in find(plans[plan], "gcloud", *prefix)
        ]
        steps[name] = gcloud(argv, env)
    # Per-family routing: the UI gets a JSON route table, which needs gcloud's alternate
    # delimiter syntax (--set-env-vars=^;^...) to survive the commas.
    routed = find(plan_commands("--routing", "per-family", "--prefix", ROUTED_PREFIX),
                  "gcloud", "run", "deploy", f"{ROUTED_PREFIX}-ui")  # fmt: skip
    routed = [
        re.sub(r"\$\{BACKEND_URL_(\w+)\}", lambda m: fake.url_of(m.group(1).lower()), arg)
        for arg in routed
    ]
    steps["per-family ui deploy"] = gcloud(routed, env)
    try:
        yield GcloudRun(
            fake,
            list(zip(every, results, strict=True)),
            control,
            steps,
            vllm_commands,
            rtx_commands,
        )
    finally:
        fake.stop()


# --- parse -------------------------------------------------------------------------------------


def test_every_deploy_command_passes_gclouds_argument_parsing(run: GcloudRun) -> None:
    assert len(run.parse_results) >= 40
    kinds = {tuple(argv[1:3]) for argv, _ in run.parse_results}
    assert {("billing", "budgets"), ("beta", "quotas"), ("storage", "rm")} <= kinds
    for argv, result in run.parse_results:
        assert result.returncode == 1 and NO_ACCOUNT in result.stderr, (
            f"{shlex.join(argv)}\nexit {result.returncode}: {result.stderr[-1500:]}"
        )


def test_an_unknown_flag_is_a_usage_error(run: GcloudRun) -> None:
    assert run.control.returncode == 2, run.control.stderr
    assert "--no-such-flag" in run.control.stderr


# --- request: the Services gcloud sends -------------------------------------------------------


def only_service(run: GcloudRun, name: str) -> dict[str, Any]:
    sent = run.fake.sent_services(name)
    assert sent, f"gcloud sent no Service for {name}: {run.fake.requests}"
    return sent[0]


def container(service: dict[str, Any]) -> dict[str, Any]:
    (only,) = service["spec"]["template"]["spec"]["containers"]
    return only


def env_of(service: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container(service)["env"]}


def test_steps_succeed_against_the_fake_on_the_regional_endpoint(run: GcloudRun) -> None:
    for name, result in run.steps.items():
        assert result.returncode == 0, f"{name}: {result.stderr[-2000:]}"
    assert run.steps["backend url"].stdout.strip() == run.fake.url_of(BACKEND)
    knative = [r for r in run.fake.requests if r.path.startswith("/apis/serving.knative.dev/")]
    hosts = {r.host.split(":")[0] for r in knative}
    assert knative and hosts == {f"{REGION}-{FAKE_DOMAIN}", f"{RTX_REGION}-{FAKE_DOMAIN}"}
    # The RTX PRO 6000 service, and only it, went to its own region.
    rtx_hosts = {r.host.split(":")[0] for r in knative if RTX_PREFIX in r.path + str(r.body)}
    assert rtx_hosts == {f"{RTX_REGION}-{FAKE_DOMAIN}"}


def test_backend_service_gpu_probe_scale_and_identity(run: GcloudRun) -> None:
    service = only_service(run, BACKEND)
    template = service["spec"]["template"]
    annotations = template["metadata"]["annotations"]
    spec = template["spec"]
    main = container(service)

    port = main["ports"][0]["containerPort"]
    assert port == deploy.SERVING_PORT
    # The startup probe checks the port Ollama serves on (not a side port).
    probe = main["startupProbe"]
    assert probe["tcpSocket"] == {"port": port}
    assert probe["periodSeconds"] * probe["failureThreshold"] <= 240
    assert probe["timeoutSeconds"] <= probe["periodSeconds"]

    assert main["resources"]["limits"] == {"cpu": "8", "memory": "32Gi", "nvidia.com/gpu": "1"}
    assert spec["nodeSelector"] == {"run.googleapis.com/accelerator": "nvidia-l4"}
    assert annotations["run.googleapis.com/gpu-zonal-redundancy-disabled"] == "True"
    assert annotations["run.googleapis.com/cpu-throttling"] == "False"

    # One instance takes at most as many requests as one model runs at once.
    assert spec["containerConcurrency"] == deploy.OLLAMA_NUM_PARALLEL
    assert annotations["autoscaling.knative.dev/maxScale"] == "1"
    assert annotations.get("autoscaling.knative.dev/minScale", "0") == "0"
    assert spec["timeoutSeconds"] == deploy.REQUEST_TIMEOUT_SECONDS

    assert spec["serviceAccountName"] == BACKEND_SA
    assert "env" not in main, "the backend's settings live in its image"
    assert service["metadata"]["labels"] == {"app": "llm-chat", "component": "backend"}


def test_backend_is_private_and_only_the_ui_may_invoke_it(run: GcloudRun) -> None:
    policy = run.fake.policies[BACKEND]
    assert policy["bindings"] == [
        {"members": [f"serviceAccount:{UI_SA}"], "role": "roles/run.invoker"}
    ]
    assert "allUsers" not in str(run.fake.policies.get(BACKEND))


def test_ui_service_env_secret_identity_and_public_access(run: GcloudRun) -> None:
    service = only_service(run, UI)
    template = service["spec"]["template"]
    annotations = template["metadata"]["annotations"]
    spec = template["spec"]

    assert env_of(service) == {
        "LLM_AUTH": "google",
        "LLM_ALLOWED_MODELS": "gemma3:4b,llama3.2:3b,mistral:7b",
        "LLM_BACKEND_URL": run.fake.url_of(BACKEND),
        # Votes in Firestore, shared by every UI instance.
        "LLM_VOTES": "firestore",
        "GOOGLE_CLOUD_PROJECT": PROJECT,
        # From Secret Manager, never a plain value.
        "LLM_SHARE_SECRET": {"secretKeyRef": {"name": "llm-chat-share-secret", "key": "latest"}},
    }
    assert spec["serviceAccountName"] == UI_SA
    assert spec["containerConcurrency"] == deploy.UI_CONCURRENCY == 80
    assert annotations["autoscaling.knative.dev/maxScale"] == str(deploy.UI_MAX_INSTANCES)
    assert deploy.UI_MAX_INSTANCES > 1  # no per-instance state left: the UI scales out
    assert annotations["run.googleapis.com/sessionAffinity"] == "true"
    assert annotations["run.googleapis.com/startup-cpu-boost"] == "True"
    assert "nvidia.com/gpu" not in container(service)["resources"].get("limits", {})
    assert not spec.get("nodeSelector")
    assert {"members": ["allUsers"], "role": "roles/run.invoker"} in run.fake.policies[UI][
        "bindings"
    ]


def test_per_family_ui_gets_the_route_table_intact(run: GcloudRun) -> None:
    env = env_of(only_service(run, f"{ROUTED_PREFIX}-ui"))
    routes = json.loads(env["LLM_BACKEND_ROUTES"])
    assert routes == {family: run.fake.url_of(family) for family in ("gemma", "llama", "mistral")}
    assert env["LLM_ALLOWED_MODELS"] == "gemma3:4b,llama3.2:3b,mistral:7b"
    assert env["LLM_BACKEND_URL"] == run.fake.url_of("gemma")


def test_ui_gets_its_public_url_without_losing_the_rest(run: GcloudRun) -> None:
    created, updated = run.fake.sent_services(UI)
    env = env_of(updated)
    assert env.pop("LLM_PUBLIC_URL") == run.fake.url_of(UI)
    assert env == env_of(created)
    assert container(updated)["image"] == container(created)["image"]


# --- the vLLM backend and the RTX PRO 6000 --------------------------------------------------


def test_vllm_service_serves_like_googles_notebook(run: GcloudRun) -> None:
    service = only_service(run, f"{VLLM_PREFIX}-backend")
    template = service["spec"]["template"]
    annotations = template["metadata"]["annotations"]
    spec = template["spec"]
    main = container(service)
    assert main["image"] == f"{REGION}-docker.pkg.dev/{PROJECT}/{VLLM_PREFIX}/backend-vllm:t1"
    # The image's entrypoint is vLLM's OpenAI server (Dockerfile.vllm); the flags are args.
    assert main["args"] == [
        "--host=0.0.0.0", f"--port={deploy.SERVING_PORT}", "--model=google/gemma-3-4b-it",
        "--served-model-name=gemma3:4b", "--max-num-seqs=4", "--max-model-len=32768",
    ]  # fmt: skip
    assert "command" not in main and "env" not in main
    assert main["ports"][0]["containerPort"] == deploy.SERVING_PORT
    assert main["resources"]["limits"] == {"cpu": "8", "memory": "32Gi", "nvidia.com/gpu": "1"}
    assert spec["nodeSelector"] == {"run.googleapis.com/accelerator": "nvidia-l4"}
    assert annotations["run.googleapis.com/cpu-throttling"] == "False"
    # One instance takes as many requests as vLLM runs sequences at once.
    assert spec["containerConcurrency"] == deploy.VLLM_MAX_NUM_SEQS == 4
    assert annotations["autoscaling.knative.dev/maxScale"] == "1"
    probe = main["startupProbe"]
    assert probe["httpGet"] == {"path": "/health", "port": deploy.SERVING_PORT}
    assert probe["periodSeconds"] * probe["failureThreshold"] <= 240
    assert spec["serviceAccountName"] == f"{VLLM_PREFIX}-backend@{PROJECT}.iam.gserviceaccount.com"
    # Private: only the UI's account may invoke it.
    assert run.fake.policies[f"{VLLM_PREFIX}-backend"]["bindings"] == [
        {"members": [f"serviceAccount:{VLLM_PREFIX}-ui@{PROJECT}.iam.gserviceaccount.com"],
         "role": "roles/run.invoker"}
    ]  # fmt: skip
    env = env_of(only_service(run, f"{VLLM_PREFIX}-ui"))
    assert env["LLM_BACKEND_API"] == "openai"
    assert env["LLM_BACKEND_URL"] == run.fake.url_of(f"{VLLM_PREFIX}-backend")
    assert env["LLM_ALLOWED_MODELS"] == "gemma3:4b"


def test_rtx_pro_6000_service_has_its_gpu_shape_region_and_ollama(run: GcloudRun) -> None:
    name = f"{RTX_PREFIX}-backend"
    service = only_service(run, name)
    template = service["spec"]["template"]
    spec = template["spec"]
    main = container(service)
    assert spec["nodeSelector"] == {"run.googleapis.com/accelerator": "nvidia-rtx-pro-6000"}
    assert main["resources"]["limits"] == {"cpu": "20", "memory": "80Gi", "nvidia.com/gpu": "1"}
    assert (
        template["metadata"]["annotations"]["run.googleapis.com/gpu-zonal-redundancy-disabled"]
        == "True"
    )
    assert spec["containerConcurrency"] == deploy.OLLAMA_NUM_PARALLEL
    assert main["startupProbe"]["tcpSocket"] == {"port": deploy.SERVING_PORT}
    # The image is the one this plan builds with the RTX PRO 6000's Ollama pin.
    (build,) = [c for c in run.rtx_commands if c[:3] == ["gcloud", "builds", "submit"]
                and "cloudbuild-llm" in c[4]]  # fmt: skip
    subs = dict(kv.split("=", 1) for kv in build[5].removeprefix("--substitutions=").split(","))
    assert subs["_OLLAMA_VERSION"] == RTX_PRO_6000.ollama_version == "0.34.2"
    assert main["image"] == subs["_IMAGE"]
    assert main["image"] == f"{RTX_REGION}-docker.pkg.dev/{PROJECT}/{RTX_PREFIX}/backend:t1"
