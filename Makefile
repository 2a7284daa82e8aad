# Fresh Debian machine: `make demo` runs the whole story locally, `make test` runs the tests.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: install system-deps demo test lint bench clean

$(BIN)/task-cleanup: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $@

install: $(BIN)/task-cleanup

# Redis and PostgreSQL server binaries (the tests and the demo start their own instances), and
# promtool (Debian's prometheus package) for the alert rules' tests.
system-deps:
	@command -v redis-server >/dev/null || { apt-get update && apt-get install -y redis-server; }
	@command -v redis-sentinel >/dev/null || { apt-get update && apt-get install -y redis-sentinel; }
	@command -v openssl >/dev/null || { apt-get update && apt-get install -y openssl; }
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || { apt-get update && apt-get install -y postgresql; }
	@command -v mariadbd >/dev/null || command -v mysqld >/dev/null || { apt-get update && apt-get install -y mariadb-server; }
	@command -v promtool >/dev/null || { apt-get update && apt-get install -y prometheus; }

demo: system-deps install
	$(BIN)/python -m scripts.demo

test: system-deps install
	$(BIN)/ruff check maintenance tests bench scripts examples
	$(BIN)/ruff format --check maintenance tests bench scripts examples
	$(BIN)/mypy
	$(BIN)/python -m pytest -q

lint: install
	$(BIN)/ruff check .

bench: install
	$(BIN)/python -m bench.bench_check

clean:
	rm -rf $(VENV) logs .demo
