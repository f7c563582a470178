# Two commands: `make demo` and `make test`. Each sets up .venv from requirements.lock first.
# `make test` also sets up the machine (scripts/setup_machine.sh: Debian packages, PostgreSQL, MariaDB,
# Redis), then lints and runs every test in parallel; `make test-unit` runs the tests that need no server.
# `make test-compat` runs the compatibility matrix: the core tests on every supported Airflow.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
UV_VERSION := 0.13.9
STAMP := $(VENV)/.installed
DRIVERS := $(VENV)/.drivers

#: pytest-xdist workers for `make pytest` (one per core); PYTEST_ARGS adds to (or overrides) the options.
PYTEST_WORKERS ?= auto

.PHONY: demo setup test test-unit lint pytest docs dist test-compat compat-lock bench bench-quick lock clean

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
		echo "building mysqlclient needs libmariadb-dev and pkg-config (Debian packages; make setup installs them)" >&2; \
		exit 1; }
	touch $(DRIVERS)

demo: $(STAMP)
	$(BIN)/python scripts/demo.py

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

# The Debian packages the tests use (installed as root) and the servers on loopback (started when down).
setup:
	scripts/setup_machine.sh

# Every tier, in parallel; tests that share a resource are grouped onto one worker (xdist_group).
pytest: $(DRIVERS)
	$(BIN)/pytest -p no:cacheprovider -n $(PYTEST_WORKERS) --dist loadgroup $(PYTEST_ARGS)

test: setup
	$(MAKE) lint
	$(MAKE) pytest

# The edit-and-test loop: the unit tier alone (the emulator, SQLite and DuckDB; no servers, no Debian packages).
test-unit: $(STAMP)
	$(BIN)/pytest -p no:cacheprovider -n $(PYTEST_WORKERS) -m unit $(PYTEST_ARGS)

# The documentation site (docs/, mkdocs.yml) into site/; warnings, broken links and references fail.
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

# The sdist and the wheel into dist/, checked as PyPI would (twine check --strict).
dist: $(STAMP)
	rm -rf dist
	$(BIN)/python -m build --no-isolation --outdir dist .
	$(BIN)/twine check --strict dist/*

# A venv per Airflow series (compat/locks/), the matrix subset of the tests in each, then the
# supported-versions table of docs/supported-versions.md from the results. COMPAT_SERIES="2.11 3.0" runs only those.
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
	rm -rf $(VENV) .compat .demo .pytest_cache .mypy_cache .ruff_cache site dist build
