# Every target sets up .venv first, with only what it needs; PYTHON picks the
# interpreter (3.11+).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# Installed modules are byte-compiled as they are installed: where
# PYTHONDONTWRITEBYTECODE is set (as in many containers) nothing would be
# compiled later, and every `apikey` command would compile Flask and
# SQLAlchemy again (3 s a call instead of 1).
PIP := $(BIN)/python -m pip install --quiet
# The port `make run` and `make run-legacy` serve on: make run PORT=5001
PORT ?= 5000

.PHONY: run run-legacy test quick fuzz lint docs bench screenshots clean

# What each target installs: the package (editable) with some of its extras,
# plus some dependency groups of pyproject.toml. Each set has its own stamp,
# remade when pyproject.toml or setup.cfg changes. Only `make run` does with
# fewer than all the extras: the tests, the docs (which import every module)
# and the benchmarks need them all. A new extra is added to EXTRAS.
EXTRAS := flask,postgresql,mysql,secret-scanning,dashboard,redis
run_EXTRAS := flask,dashboard
docs_EXTRAS := $(EXTRAS)
docs_GROUPS := docs
fuzz_EXTRAS := $(EXTRAS)
fuzz_GROUPS := test
lint_EXTRAS := $(EXTRAS)
lint_GROUPS := lint
bench_EXTRAS := $(EXTRAS)
bench_GROUPS := bench
test_EXTRAS := $(EXTRAS)
test_GROUPS := lint docs bench
# The smaller sets a set contains: installing it marks them installed too, so
# that `make run` after `make test` installs nothing.
docs_CONTAINS := run
fuzz_CONTAINS := run
lint_CONTAINS := run fuzz bench
bench_CONTAINS := run
test_CONTAINS := run docs fuzz lint bench

$(BIN)/python:
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11) and "Python 3.11 or newer is needed")'
	$(PYTHON) -m venv $(VENV)

# Dependency groups need pip 25.1 or newer; `make run` does without them.
$(VENV)/.installed-%: pyproject.toml setup.cfg | $(BIN)/python
	$(if $($*_GROUPS),$(PIP) 'pip>=25.1')
	$(PIP) -e '.[$($*_EXTRAS)]' $(addprefix --group ,$($*_GROUPS))
	touch $@ $(addprefix $(VENV)/.installed-,$($*_CONTAINS))

run: $(VENV)/.installed-run
	$(BIN)/python -m examples.flask_app --port $(PORT)

run-legacy: $(VENV)/.installed-run
	$(BIN)/python -m examples.legacy_app --port $(PORT)

lint: $(VENV)/.installed-lint
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

# Warnings are errors (nitpicky: every cross-reference must resolve). -E reads
# every page again, so a warning cannot hide in a page left from the last build.
docs: $(VENV)/.installed-docs
	$(BIN)/sphinx-build -E -W --keep-going -q -b html docs docs/_build/html

# Branch coverage of the package, printed after the tests (pyproject.toml).
# pytest exits 5 when it ran no test: that is a failure too, and said so.
# The test set is installed first: it holds what lint and docs need.
# Without every server (PostgreSQL, MySQL, Redis) the tests that need one skip,
# and coverage is reported without its floor, which holds where all run (CI).
ifeq ($(and $(APIKEY_TEST_POSTGRES_URL),$(APIKEY_TEST_MYSQL_URL),$(APIKEY_TEST_REDIS_URL)),)
COVERAGE_FLOOR := --cov-fail-under=0
endif
test: $(VENV)/.installed-test lint docs
	$(BIN)/pytest --cov --cov-report=term $(COVERAGE_FLOOR) $(PYTEST_ARGS) || { status=$$?; \
	  [ $$status -ne 5 ] || echo "pytest ran no tests" >&2; exit $$status; }
	@[ -z "$(COVERAGE_FLOOR)" ] || echo "Coverage floor not applied: set APIKEY_TEST_POSTGRES_URL," \
	  "APIKEY_TEST_MYSQL_URL and APIKEY_TEST_REDIS_URL to run every test (see README)."

# The suite without the real-server tests (marked slow), and without the docs.
quick: $(VENV)/.installed-test lint
	$(BIN)/pytest -m "not slow" $(PYTEST_ARGS)

# The property tests at 100000 examples each; prints how many ran.
fuzz: $(VENV)/.installed-fuzz
	APIKEY_FUZZ_EXAMPLES=$${APIKEY_FUZZ_EXAMPLES:-100000} $(BIN)/pytest -m fuzz -s -q

# The dashboard's screenshots in the docs, taken by its browser tests.
screenshots: $(VENV)/.installed-test
	APIKEY_SCREENSHOT_DIR=docs/_static/dashboard $(BIN)/pytest -q tests/test_dashboard_browser.py

bench: $(VENV)/.installed-bench
	$(BIN)/python -m benchmarks $(BENCH_ARGS)

clean:
	rm -rf $(VENV) instance docs/_build docs/api .mypy_cache .ruff_cache .pytest_cache .coverage
