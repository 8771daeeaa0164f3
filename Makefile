# Two entry points for a fresh clone: `make run` and `make test` (see README.md).
VENV ?= .venv
PY := $(VENV)/bin/python
DATA ?= var/ctnode

.PHONY: run test install
run: install
	$(VENV)/bin/ctnode init $(DATA) --keep-existing
	$(VENV)/bin/ctnode serve --config $(DATA)/ctnode.yaml

test: install
	$(PY) -m pytest $(PYTEST_ARGS)

install: $(VENV)/.installed

# torch is pinned to the CPU build on local disk; the C++ operators compile against it, so no build isolation.
$(VENV)/.installed: pyproject.toml setup.py $(wildcard csrc/*.cpp csrc/*/*.cpp csrc/*/*/*.cpp csrc/*/*.h csrc/*/*/*.h csrc/*/*/*.cuh csrc/*/*/*.cu)
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip setuptools wheel
	$(PY) -m pip install -q torch==2.13.0 ninja
	$(PY) -m pip install -q --no-build-isolation -e '.[test]'
	touch $@
