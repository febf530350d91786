# Every target sets up .venv first; PYTHON picks the interpreter (3.11+).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: run run-legacy test quick fuzz lint bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11) and "Python 3.11 or newer is needed")'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test,bench]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/python -m examples.flask_app

run-legacy: $(STAMP)
	$(BIN)/python -m examples.legacy_app

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

# pytest exits 5 when it ran no test: that is a failure too, and said so.
test: lint
	$(BIN)/pytest $(PYTEST_ARGS) || { status=$$?; \
	  [ $$status -ne 5 ] || echo "pytest ran no tests" >&2; exit $$status; }

# The suite without the real-server tests (marked slow).
quick: lint
	$(BIN)/pytest -m "not slow" $(PYTEST_ARGS)

# The property tests at 100000 examples each; prints how many ran.
fuzz: $(STAMP)
	APIKEY_FUZZ_EXAMPLES=$${APIKEY_FUZZ_EXAMPLES:-100000} $(BIN)/pytest -m fuzz -s -q

bench: $(STAMP)
	$(BIN)/python -m benchmarks $(BENCH_ARGS)

clean:
	rm -rf $(VENV) instance .mypy_cache .ruff_cache .pytest_cache
