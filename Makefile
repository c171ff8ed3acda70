# souverain: the two commands a newcomer needs are `make up` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
STAMP   = $(VENV)/.installed
TORCH  ?= 2.13.0

.PHONY: setup up test lint unit bench browser idp openssl tcpdump screenshots clean

# llama.cpp is built once (scripts/build-llamacpp, cached): one wheel of llama-cpp-python
# whose package holds the shared libraries and llama-server, which .venv/bin/llama-server
# links to; while it builds, torch downloads. Without llama-server, llama-cpp-python serves.
$(STAMP): pyproject.toml scripts/build-llamacpp $(wildcard scripts/patches/*.patch) | openssl
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	( PIP=$(BIN)/pip scripts/build-llamacpp > $(VENV)/.llamacpp || rm -f $(VENV)/.llamacpp ) & \
	  build=$$! && \
	  $(BIN)/pip install --quiet "torch==$(TORCH)" && \
	  wait $$build && test -s $(VENV)/.llamacpp && wheels="$$(cat $(VENV)/.llamacpp)" && \
	  $(BIN)/pip install --quiet --no-deps --force-reinstall "$$wheels"/llama_cpp_python-*.whl && \
	  $(BIN)/pip install --quiet --find-links "$$wheels" -e ".[llamacpp,embeddings,training,dev]" && \
	  cd $(BIN) && rm -f llama-server && \
	  if [ -x ../lib/python3*/site-packages/llama_cpp/lib/llama-server ]; then \
	    ln -s ../lib/python3*/site-packages/llama_cpp/lib/llama-server llama-server; fi
	touch $(STAMP)

# llama.cpp is built portable by default (AVX2/FMA/F16C on x86-64, any aarch64): set
# CMAKE_ARGS="-DGGML_NATIVE=ON" (or "-DGGML_CUDA=ON") for a build made for this machine only.
setup: $(STAMP)  ## create .venv and install souverain, its CPU engines (llama.cpp, embeddings), fine-tuning and the dev tools

up: $(STAMP)  ## set up, then run everything locally with the built-in model
	$(BIN)/souverain up

lint: $(STAMP)  ## ruff, mypy --strict, import-linter layer contracts
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/mypy
	$(BIN)/lint-imports

unit: $(STAMP)  ## the fast tests only (no Ray, no engine)
	$(BIN)/pytest -q -m "not ray and not engine"

# The suite runs as two streams at once, each test in exactly one: the tests of real Ray
# clusters and engines (the heavy stream, on this terminal), and the platform's tests with the
# stand-in engine, which mostly wait on HTTP round trips (the light stream,
# SOUVERAIN_TEST_STREAM=light: its own PostgreSQL databases; its log follows). The tests that
# change what the whole machine shares (marked exclusive: a PostgreSQL restart) run alone after.
# A stuck test fails with its stack (pytest-timeout: 10 minutes each in the light stream); a
# stream still running at its bound (60 and 75 minutes) is interrupted, so it ends with the
# summary of what it ran and where it stood rather than a silent wait.
HEAVY = (ray or engine) and not exclusive
LIGHT = not (ray or engine or exclusive)
STREAM_BOUND = timeout --signal=INT --kill-after=60
test: lint browser idp tcpdump  ## set up, lint, then the whole suite (PostgreSQL too when SOUVERAIN_TEST_POSTGRES_URL is set)
	@log="$$(mktemp)"; \
	SOUVERAIN_TEST_STREAM=light $(STREAM_BOUND) 3600 $(BIN)/pytest -q --timeout=600 -m "$(LIGHT)" \
	  > "$$log" 2>&1 & light=$$!; \
	$(STREAM_BOUND) 4500 $(BIN)/pytest -q -m "$(HEAVY)"; heavy=$$?; \
	wait $$light; light=$$?; \
	echo "--- the light stream ($(LIGHT)):"; cat "$$log"; rm -f "$$log"; \
	echo "--- alone (exclusive):"; $(BIN)/pytest -q -m exclusive; alone=$$?; \
	test $$heavy = 0 && test $$light = 0 && test $$alone = 0

# llama-server serves the gateway over HTTPS only: it is built with Debian's OpenSSL.
SSL_APT = DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends libssl-dev
openssl:  ## install OpenSSL's headers for llama-server (as root; otherwise says how)
	@test -f /usr/include/openssl/ssl.h || { \
	  if [ "$$(id -u)" = 0 ]; then $(SSL_APT) || { apt-get update -qq && $(SSL_APT); }; \
	  else echo "llama-server needs OpenSSL's headers: sudo apt-get install libssl-dev" >&2; exit 1; fi; }

# The link tests capture what crosses between the gateway and engines with Debian's tcpdump.
TCPDUMP_APT = DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends tcpdump
tcpdump:  ## install tcpdump for the link-capture tests (as root; otherwise says how)
	@command -v tcpdump >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then $(TCPDUMP_APT) || { apt-get update -qq && $(TCPDUMP_APT); }; \
	  else echo "The link tests need tcpdump: sudo apt-get install tcpdump" >&2; exit 1; fi; }

# The console's tests drive Debian's Chromium through Playwright, which downloads no browser.
APT = DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends chromium
browser:  ## install Chromium for the console tests (as root; otherwise says how)
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then $(APT) || { apt-get update -qq && $(APT); }; \
	  else echo "The console tests need Chromium: sudo apt-get install chromium" >&2; exit 1; fi; }

# Single sign-on is tested against a real OpenID provider (`oidc-provider`, pinned by its
# lockfile) run by Node.js; the tests install it too when it is missing.
idp:  ## install the OpenID provider the identity tests sign in with (needs Node.js >= 20 and npm)
	@command -v node >/dev/null 2>&1 && command -v npm >/dev/null 2>&1 || { \
	  echo "The identity tests need Node.js >= 20 and npm (e.g. apt-get install nodejs npm)" >&2; exit 1; }
	cd tests/identity/provider && npm ci --no-audit --no-fund --loglevel=error

screenshots: $(STAMP) browser  ## regenerate docs/console/*.png from the browser tests
	scripts/console-screenshots

bench: $(STAMP)  ## end-to-end tokens/s through souverain vs straight to the engine
	$(BIN)/python bench/e2e_tokens.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
