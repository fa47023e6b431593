# Run `make` to list the targets.
SHELL := /bin/bash
# PyTorch's CPU wheel (openai-whisper extra) and Django 5.2 LTS both want CPython 3.11 (see README).
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
export DJANGO_SETTINGS_MODULE := config.settings

.DEFAULT_GOAL := help

help: ## List the targets
	@grep -hE '^[a-z][a-z-]*:.*## ' $(MAKEFILE_LIST) | awk -F ':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

$(VENV)/.stamp-run: pyproject.toml constraints.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -c constraints.txt -e .
	@touch $@

$(VENV)/.stamp-dev: pyproject.toml constraints.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -c constraints.txt -e '.[dev,whisper]'
	@touch $@ $(VENV)/.stamp-run

install: $(VENV)/.stamp-run ## Create .venv and install the platform

run: $(VENV)/.stamp-run ## Set up and serve the whole platform on embedded defaults (Ctrl-C stops)
	$(PY) manage.py migrate --no-input -v 1
	$(PY) manage.py ensure_superuser
	$(PY) manage.py seed_demo
	$(PY) manage.py serve --no-migrate

test: $(VENV)/.stamp-dev lint typecheck ## Lint, type-check and run the whole test suite
	bash .ci/pytest-passes $(PY)

lint: $(VENV)/.stamp-dev ## ruff lint and format check
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

fmt: $(VENV)/.stamp-dev ## Format and autofix
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

typecheck: $(VENV)/.stamp-dev ## mypy with django-stubs
	$(VENV)/bin/mypy .

audit: $(VENV)/.stamp-dev ## pip-audit the locked versions (constraints.txt) against PyPI's advisories
	$(VENV)/bin/pip-audit -r constraints.txt --no-deps --disable-pip --strict --progress-spinner off

lock: ## Re-pin constraints.txt from a fresh venv with every extra
	rm -rf /tmp/lock-venv && $(PYTHON) -m venv /tmp/lock-venv
	/tmp/lock-venv/bin/pip install -q -e '.[dev,whisper]'
	/tmp/lock-venv/bin/pip freeze --exclude-editable | grep -v '^-e ' > constraints.txt

clean: ## Remove the venv and local data
	rm -rf $(VENV) var

.PHONY: help install run test lint fmt typecheck audit lock clean
