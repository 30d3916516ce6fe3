# Two commands do all set-up on a fresh machine (Python 3.11, PyPI, no GPU):
#   make demo   - the main job on the built-in DSV4 presets
#   make test   - the test suite
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

$(STAMP): pyproject.toml setup.py Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0 triton==3.6.0  # CPU torch (unpinned pulls GBs of CUDA wheels); triton as on the GPU image
	$(PY) -m pip install -q -e '.[test]'
	touch $@

.PHONY: demo test
demo: $(STAMP)
	$(VENV)/bin/fusegraph demo

test: $(STAMP)
	TRITON_INTERPRET=1 $(PY) -m pytest -q -p no:cacheprovider tests
