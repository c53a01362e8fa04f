# The two set-up commands of the README: `make run` and `make test`.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
SANDBOX ?= sandbox
PORT ?= 8765

.PHONY: run test venv sysdeps bench clean-sandbox

venv: $(STAMP)

# Reinstall only when the project's dependencies change.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

# System programs the tests drive for real: sshd (remote workers), rsync (mirrors), tmux (end-to-end).
sysdeps:
	@missing=""; \
	command -v sshd >/dev/null 2>&1 || test -x /usr/sbin/sshd || missing="$$missing openssh-server"; \
	command -v rsync >/dev/null 2>&1 || missing="$$missing rsync"; \
	command -v tmux >/dev/null 2>&1 || missing="$$missing tmux"; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	  else echo "missing system packages:$$missing (install them with apt-get)"; exit 1; fi; \
	fi
	@mkdir -p /run/sshd 2>/dev/null || true

run: venv
	$(VENV)/bin/imageselector sandbox up $(SANDBOX) --port $(PORT)

test: venv sysdeps
	$(PY) -m pytest -q -p no:cacheprovider tests

bench: venv
	@echo "benchmarks: see bench/README.md"
