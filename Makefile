# Two entry points for a fresh machine: `make demo` and `make test`.
# Both create (or update) the virtual environment in .venv first.
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.hwnas-installed

.PHONY: venv demo test lint ssh-server clean-venv

venv: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	@command -v $(PYTHON) >/dev/null || { echo "$(PYTHON) not found: install Python 3.11 or pass PYTHON=/path/to/python3.11"; exit 1; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# The pinned CPU wheel first, so nothing later can pull a CUDA build.
	$(PY) -m pip install --quiet -c constraints.txt torch==2.13.0
	$(PY) -m pip install --quiet -c constraints.txt -e '.[test]'
	# Ray (the optional 'distributed' extra, about 30 s from the pip cache) so the tests use a real
	# local cluster; where it cannot install, the Ray tests skip and say why.
	$(PY) -m pip install --quiet -c constraints.txt -e '.[test,distributed]' || \
	  echo "note: Ray did not install; the Ray tests will skip"
	touch $(STAMP)

# The main job on the embedded default: this machine, the shipped table and
# predictor, the bundled digits dataset.
demo: $(STAMP)
	$(PY) -m scripts.demo

# An OpenSSH server on loopback lets the tests profile through a real SSH
# connection; without root or apt the SSH tests skip and say why.
ssh-server:
	@{ command -v sshd >/dev/null || test -x /usr/sbin/sshd; } && command -v ssh >/dev/null && command -v ssh-keygen >/dev/null || \
	  { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openssh-server openssh-client >/dev/null) ; } || \
	  echo "note: no sshd and no way to install it; SSH tests will skip"

# Lint and types first (seconds): ruff on the whole tree, its formatter on the formatted paths,
# mypy as configured in pyproject.toml (strict on hwnas/ and predictors/, lenient elsewhere).
lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check hwnas
	$(PY) -m mypy

test: $(STAMP) ssh-server lint
	$(PY) -m pytest -q

clean-venv:
	rm -rf $(VENV)
