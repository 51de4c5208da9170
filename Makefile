# Two entry points: `make run` and `make test`. Everything else is what they need.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/notifier run -c watchers.yaml

test: $(STAMP)
	$(BIN)/ruff check notifier tests bench
	$(BIN)/mypy notifier tests
	$(BIN)/pytest

bench: $(STAMP)
	$(BIN)/python bench/check_pass.py

clean:
	rm -rf $(VENV) .pytest_cache
