# Two entry points, both idempotent: `make demo` and `make test` (see README.md).
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.vlmprobe-installed
DEMO_OUT ?= demo_out

.PHONY: setup demo test test-fast test-science clean

setup: $(STAMP)

# Re-install only when the dependency list changes. pip picks the torch/torchvision pair.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test,dicom,volumes,ct]'
	touch $(STAMP)

demo: setup
	$(VENV)/bin/vlmprobe demo --out $(DEMO_OUT)

test: setup
	$(PY) -m pytest

# Every module in a few minutes: no end-to-end runs (slow) and no checks of findings (science).
test-fast: setup
	$(PY) -m pytest -m "not slow and not science"

# What the study finds on phantoms: demo margin, RISE background bias, signal recovery.
test-science: setup
	$(PY) -m pytest -m science

clean:
	rm -rf $(DEMO_OUT) .pytest_cache
