# The two commands of the README. Each sets itself up: a virtual environment in .venv with the
# pinned packages of requirements.txt and the compiled extension. A second run only rebuilds
# what changed.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PACKAGES := $(VENV)/.packages-installed
BUILT := $(VENV)/.extension-built
SOURCES := setup.py pyproject.toml $(shell find csrc -type f 2>/dev/null)

.PHONY: demo test setup bench clean

demo: setup
	$(PY) -m igcam_fast demo

test: setup
	$(PY) -m pytest -q

setup: $(BUILT)

$(PACKAGES): requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	touch $@

# --no-build-isolation: the extension is compiled against the torch installed above.
$(BUILT): $(PACKAGES) $(SOURCES)
	$(PY) -m pip install -q --no-build-isolation --no-deps -e .
	touch $@

clean:
	rm -rf build *.egg-info igcam_fast/*.so
