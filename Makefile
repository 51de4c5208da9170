# Two entry points: `make run` and `make test`. Everything else is what they need.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Debian packages the tests run for real (servers, browsers); `make test` installs the missing
# ones with apt-get when run as root (as CI is), and otherwise says which to install.
DEBS := chromium libnss3-tools dovecot-imapd dovecot-pop3d postgresql

.PHONY: run test debs lint bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/notifier run -c watchers.yaml

debs:
	@missing=""; for p in $(DEBS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -z "$$missing" ]; then exit 0; fi; \
	if [ "$$(id -u)" != 0 ]; then echo "make test needs these Debian packages:$$missing;" \
		"install them with: sudo apt-get install$$missing" >&2; exit 1; fi; \
	apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing

test: $(STAMP) debs
	$(BIN)/ruff check notifier tests bench
	$(BIN)/mypy notifier tests bench
	$(BIN)/pytest -n 2

bench: $(STAMP)
	$(BIN)/python bench/check_pass.py

clean:
	rm -rf $(VENV) .pytest_cache
