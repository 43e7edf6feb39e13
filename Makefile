# Two commands on a fresh clone, with nothing but Python 3.10+:
#   make demo   sets up .venv and runs the offline demo search (tiny models, bundled data)
#   make test   sets up .venv and runs the lint and the test suite (what CI runs)
#   make check  the inner loop: the lint and every test that starts no real search (under 2 minutes)
# Each creates .venv when it is absent and installs only what is missing or changed.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# What pip installs for torch where no CUDA driver is present, before the project: an unpinned torch
# there is a multi-GB CUDA build. torch==2.13.0 takes a CPU wheel where one is provided locally;
# elsewhere pass TORCH_CPU="torch --index-url <PyTorch's CPU wheel index>".
TORCH_CPU ?= torch==2.13.0
# Where `nvidia-smi` answers, torch comes from the project's own requirement (pip's default: a CUDA build).
HAS_CUDA := $(shell nvidia-smi -L >/dev/null 2>&1 && echo yes)
# The demo's experiment: the name search_spaces/tiny.yaml gives it, in the default storage path.
DEMO_EXPERIMENT := ray_results/tiny-demo

.PHONY: demo test check setup setup-test clean-venv

# a second `make demo` continues (or, finished, summarises again) the first one's experiment
demo: $(VENV)/.demo-installed
	@if [ -f $(DEMO_EXPERIMENT)/space.yaml ]; then \
		$(BIN)/python -m tune_dialsum search --resume --name $(notdir $(DEMO_EXPERIMENT)); \
	else \
		$(BIN)/python -m tune_dialsum search --space search_spaces/tiny.yaml; \
	fi

test: $(VENV)/.test-installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python -m pytest -q -ra

check: $(VENV)/.test-installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python -m pytest -q -ra -m "not slow"

setup: $(VENV)/.demo-installed
setup-test: $(VENV)/.test-installed

# A venv that fails half-way (Debian without python3-venv) is removed, not taken for a working one.
$(BIN)/python:
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 10) and "tune_dialsum needs Python 3.10 or newer")'
	$(PYTHON) -m venv $(VENV) || { rm -rf $(VENV); echo "make: $(PYTHON) -m venv failed; on Debian/Ubuntu: apt-get install python3-venv" >&2; exit 1; }

# with CUDA, nothing here: the project's requirement brings torch
$(VENV)/.torch-installed: | $(BIN)/python
	$(if $(HAS_CUDA),,$(BIN)/python -m pip install -q --disable-pip-version-check $(TORCH_CPU))
	touch $@

# the demo: the project with its report, tracking and dashboard extras
$(VENV)/.demo-installed: pyproject.toml $(VENV)/.torch-installed
	$(BIN)/python -m pip install -q --disable-pip-version-check -e ".[analysis,tracking,dashboard]"
	touch $@

# the tests: the project with every extra the suite exercises
$(VENV)/.test-installed: pyproject.toml $(VENV)/.torch-installed
	$(BIN)/python -m pip install -q --disable-pip-version-check -e ".[test]"
	touch $@

clean-venv:
	rm -rf $(VENV)
