# The two commands a newcomer needs: `make demo` and `make test`. Both set up .venv first.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: setup browser demo lint test bench package deploy clean

setup: $(STAMP)

# Re-install when the project's dependencies change; the stamp keeps repeat runs instant.
# training/requirements.txt goes in as the training container installs it: PIP_NO_DEPS, so that
# smdebug's stale pins never downgrade protobuf (see that file).
$(STAMP): pyproject.toml training/requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[local,test]'
	PIP_NO_DEPS=1 $(PY) -m pip install --quiet -r training/requirements.txt
	touch $(STAMP)

demo: setup
	$(VENV)/bin/droptrain demo

# The report test opens the training report in Debian's headless Chromium, and the console test
# drives it through Debian's chromedriver (never a downloaded browser); installed here when
# missing, as root on a Debian machine like CI's.
browser:
	@{ command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1; } && \
	  command -v chromedriver >/dev/null 2>&1 || \
	  { echo "installing Debian's chromium and chromium-driver for the browser tests"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null; }

# ruff (pyproject.toml's rules, 120 columns) and its formatter over the whole tree, mypy over the
# Lambda's code, and the code's shape: sizes and dependencies (tests/test_structure.py).
lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy app.py chalice_app
	$(PY) -m pytest -q -p no:cacheprovider tests/test_structure.py

# pytest exits 5 when it collected no tests; make treats any non-zero exit as a failure. Two
# workers, each test file's tests in one of them (its fixtures built once), the slowest files first
# (tests/conftest.py); the slowest tests are listed.
test: setup browser
	$(PY) -m pytest -n 2 --dist loadfile --no-loadscope-reorder --durations=15

# Benchmarks are not tests: no timing assertions, results in bench/results/ (docs/performance.md).
bench: setup
	$(PY) bench/run.py

STAGE ?= dev

# The stage's SAM template in build/package-$(STAGE)/ (offline; no AWS account needed).
package: setup
	$(VENV)/bin/droptrain package --stage $(STAGE)

# Needs AWS credentials; the SageMaker SDK (the deploy extra) resolves the region's images (docs/operations.md).
deploy: setup
	$(PY) -m pip install --quiet -e '.[deploy]'
	$(VENV)/bin/droptrain deploy --stage $(STAGE)

clean:
	rm -rf $(VENV) .droptrain .pytest_cache build
