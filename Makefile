# The two commands of the README. Each sets itself up: a virtual environment in .venv with the
# pinned packages (requirements.txt for the demo; requirements-test.txt adds the test runner and the
# peer libraries for the tests) and the compiled extension. A second run only rebuilds what changed.
#
# Two build modes, one stamp each, so that they never undo each other:
#   make demo  builds what can run here: the CPU extension, plus the CUDA one where a GPU is visible.
#   make test  (and CI) always compiles and links the CUDA code too (IGCAM_FAST_BUILD_CUDA=1, where a
#              CUDA toolkit is installed), so it is checked on every test run, GPU or not.
# Once the CUDA build has run, the demo uses it too (and keeps it up to date).

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PACKAGES := $(VENV)/.packages-installed
PACKAGES_TEST := $(VENV)/.test-packages-installed
BUILT_DEFAULT := $(VENV)/.extension-built
BUILT_CUDA := $(VENV)/.extension-built-with-cuda
SOURCES := setup.py setup.cfg pyproject.toml $(shell find csrc -type f 2>/dev/null)
# The CUDA module needs nvcc (and a torch built with CUDA); without them the test build is the
# default one, and says so.
HAVE_NVCC := $(shell command -v nvcc >/dev/null 2>&1 || test -x "$${CUDA_HOME:-/usr/local/cuda}/bin/nvcc" && echo 1)
PIP := $(PY) -m pip --disable-pip-version-check

.PHONY: demo test setup setup-test browser bench clean

demo: setup
	@echo "==> demo: Grad-CAM and Integrated Grad-CAM on the bundled photos (outputs/demo/)"
	$(PY) -m igcam_fast demo

test: setup-test browser
	@echo "==> test suite"
	$(if $(HAVE_NVCC),IGCAM_FAST_BUILD_CUDA=1 )$(PY) -m pytest -q

# The HTML index of `explain --overlays` is checked in headless Chromium (Debian's package: about
# 100 MB of download, under a minute). Installed when missing and apt-get can run; otherwise that
# one test skips and says why.
browser:
	@if command -v chromium >/dev/null 2>&1; then :; \
	elif command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" -eq 0 ]; then \
	  echo "==> installing chromium (Debian package) for the HTML index check in a real browser"; \
	  apt-get update -qq && apt-get install -y -qq --no-install-recommends chromium; \
	else echo "==> chromium is not installed and cannot be installed here: the browser check will skip"; fi

# The demo accepts either build: once the test build (with CUDA) exists, it keeps to that one, so a
# change in csrc/ rebuilds it rather than leaving a stale CUDA module beside a fresh CPU one.
setup: $(if $(wildcard $(BUILT_CUDA)),$(BUILT_CUDA),$(BUILT_DEFAULT))

setup-test: $(PACKAGES_TEST) $(BUILT_CUDA)

$(PACKAGES): requirements.txt
	@echo "==> [1/3] virtual environment in $(VENV)"
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@echo "==> [2/3] installing the pinned packages of requirements.txt (torch and its CUDA libraries are most of it)"
	$(PIP) install --progress-bar off --no-compile -r requirements.txt
	touch $@

$(PACKAGES_TEST): $(PACKAGES) requirements-test.txt
	@echo "==> installing the test packages of requirements-test.txt (pytest; pytorch-grad-cam, captum, Quantus)"
	$(PIP) install --progress-bar off --no-compile -r requirements-test.txt
	touch $@

# --no-build-isolation: the extension is compiled against the torch installed above.
$(BUILT_DEFAULT): $(PACKAGES) $(SOURCES)
	@echo "==> [3/3] compiling the extension (CPU kernels; CUDA kernels only where a GPU is visible)"
	$(PIP) install --progress-bar off --no-build-isolation --no-deps -e .
	touch $@

$(BUILT_CUDA): $(PACKAGES) $(SOURCES)
	@if [ "$(HAVE_NVCC)" = 1 ] && $(PY) -c "import sys, torch; sys.exit(0 if torch.version.cuda else 1)"; then \
	  echo "==> [3/3] compiling the extension with its CUDA kernels (IGCAM_FAST_BUILD_CUDA=1; takes minutes)"; \
	  echo "IGCAM_FAST_BUILD_CUDA=1 $(PIP) install --progress-bar off --no-build-isolation --no-deps -e ."; \
	  IGCAM_FAST_BUILD_CUDA=1 $(PIP) install --progress-bar off --no-build-isolation --no-deps -e .; \
	else \
	  echo "==> [3/3] compiling the extension; no CUDA toolkit (nvcc) or a CPU-only torch, so no CUDA kernels"; \
	  echo "$(PIP) install --progress-bar off --no-build-isolation --no-deps -e ."; \
	  $(PIP) install --progress-bar off --no-build-isolation --no-deps -e .; \
	fi
	touch $@ $(BUILT_DEFAULT)

clean:
	rm -rf build *.egg-info igcam_fast/*.so $(BUILT_DEFAULT) $(BUILT_CUDA)
