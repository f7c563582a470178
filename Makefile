# Two commands: `make demo` and `make test`. Each sets up .venv from requirements.lock first.
# `make test-compat` runs the compatibility matrix: the core tests on every supported Airflow.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
UV_VERSION := 0.13.9
STAMP := $(VENV)/.installed
DRIVERS := $(VENV)/.drivers

.PHONY: demo test lint pytest test-compat compat-lock bench bench-quick clean

# Everything in requirements.lock but mysqlclient, which compiles against a C library: `make demo` needs
# only Python and make. The targets that talk to MariaDB add it ($(DRIVERS)).
$(STAMP): requirements.lock pyproject.toml
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "Python 3.11+ is required"'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet "uv==$(UV_VERSION)"
	grep -v '^mysqlclient==' requirements.lock > $(VENV)/requirements-without-mysqlclient.txt
	$(BIN)/uv pip install --quiet --compile-bytecode --no-deps --python $(BIN)/python -r $(VENV)/requirements-without-mysqlclient.txt
	$(BIN)/uv pip install --quiet --python $(BIN)/python --no-deps -e .
	rm -f $(DRIVERS)
	touch $(STAMP)

$(DRIVERS): $(STAMP)
	$(BIN)/uv pip install --quiet --no-deps --python $(BIN)/python "$$(grep '^mysqlclient==' requirements.lock)" || { \
		echo "building mysqlclient needs libmariadb-dev and pkg-config (Debian packages; .ci/run installs them)" >&2; \
		exit 1; }
	touch $(DRIVERS)

demo: $(STAMP)
	$(BIN)/python scripts/demo.py

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

pytest: $(DRIVERS)
	$(BIN)/pytest -p no:cacheprovider $(PYTEST_ARGS)

test: lint pytest

# A venv per Airflow series (compat/locks/), the matrix subset of the tests in each, then the README's
# supported-versions table from the results. COMPAT_SERIES="2.11 3.0" runs only those.
test-compat: $(DRIVERS)
	$(BIN)/python compat/matrix.py run $(COMPAT_SERIES)
	$(BIN)/python compat/matrix.py table

# Recompile the matrix's locks after changing dependencies in pyproject.toml (needs PyPI).
compat-lock: $(STAMP)
	$(BIN)/python compat/matrix.py lock

bench: $(DRIVERS)
	$(BIN)/python -m benchmarks.run

bench-quick: $(DRIVERS)
	$(BIN)/python -m benchmarks.run --quick

# Regenerate the lock file after changing dependencies in pyproject.toml.
lock: $(STAMP)
	$(BIN)/uv pip compile pyproject.toml --extra dev --python-version 3.11 -o requirements.lock

clean:
	rm -rf $(VENV) .compat .demo .pytest_cache .mypy_cache .ruff_cache
