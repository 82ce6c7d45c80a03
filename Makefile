# dfad-lightning: every target sets up .venv first if it is missing or older than pyproject.toml.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install run test test-fast lint typecheck check docs docs-serve clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)  ## Create .venv and install the project with its development tools.

run: $(STAMP)  ## The embedded default run (digits, CPU); pass overrides as ARGS="key=value ...".
	$(BIN)/python train.py $(ARGS)

# Both tiers run one pytest worker per core (pytest-xdist), each test file on one worker so that
# a file's module fixtures (a trained teacher, a straight run to compare with) are built once.
PYTEST := $(BIN)/python -m pytest -n auto --dist loadfile

test: $(STAMP)  ## The whole test suite (what CI runs).
	$(PYTEST)

test-fast: $(STAMP)  ## The development tier: every module; long runs (processes, whole real-data paths) left out.
	$(PYTEST) -m "not slow"

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

check: lint typecheck test

docs: $(STAMP)  ## Build the documentation site into site/ (strict: a broken link or reference fails).
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

docs-serve: $(STAMP)  ## Serve the documentation site at http://127.0.0.1:8000, rebuilt on every change.
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs serve

clean:
	rm -rf outputs multirun site .cache .pytest_cache .mypy_cache .ruff_cache
