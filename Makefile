# Two commands do all set-up on a fresh Debian/Ubuntu machine:
#   make demo   - installs what it needs, then runs a real job end to end on the demo manifest
#   make test   - installs what it needs (apt, pip, the BM1684X simulator SDK, the native extension), runs pytest
#                 on what the repository carries (tests/data, tests/fixtures); the checks against the released
#                 models' tokenizer files also read $TRANSCRIBE_BATCH_SHARED (.ci/run: ../shared) and skip without it
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
SIM_SDK ?= $(HOME)/.cache/transcribe-batch/sim-sdk-1.30.2
APT_PACKAGES := flite chromium ffmpeg g++ python3-dev
PYTEST_ARGS ?=

.PHONY: system-deps venv sim-sdk native test demo clean

system-deps:
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip setuptools wheel
	$(PIP) install -q -e '.[dev]'
	# Qwen3-ASR's reference classes: --no-deps, since qwen-asr pins transformers 4.57.6 (docs/models-and-engines.md)
	$(PIP) install -q --no-deps 'qwen-asr==0.0.6'
	touch $@

venv: $(VENV)/.installed

sim-sdk:
	bash native/scripts/fetch_sim_sdk.sh $(SIM_SDK)

native: venv sim-sdk
	LIBSOPHON_ROOT=$(SIM_SDK) $(PIP) install -q ./native

test: system-deps venv native
	TRANSCRIBE_BATCH_SIM_SDK=$(SIM_SDK) $(VENV)/bin/pytest $(PYTEST_ARGS)

demo: system-deps venv native
	bash demo/run.sh

clean:
	rm -rf $(VENV) build dist *.egg-info native/_build
