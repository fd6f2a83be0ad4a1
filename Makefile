# selfheal: every target does its own set-up on a fresh machine (venv, packages, broker jars, broker).
#   make demo    the main job on the embedded default (Kafka broker + chDB), writes demo-summary.json
#   make test    unit + integration tests against the real broker and chDB
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml requirements.lock | sha1sum | cut -c1-12)

.PHONY: venv kafka kafka-stop browser demo test unit lint bench bench-drift bench-drift-worker bench-canary bench-otlp bench-phi chaos clean

$(STAMP): pyproject.toml requirements.lock
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c requirements.lock -e '.[dev]'
	rm -f $(VENV)/.installed-* && touch $(STAMP)

venv: $(STAMP)

kafka: venv
	scripts/kafka.sh start

kafka-stop:
	scripts/kafka.sh stop

# headless Chromium from Debian's packages, for the report tests (tests/integration/test_report.py);
# apt-get runs only when no chromium is on PATH (sudo when not root)
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)
browser:
	@command -v chromium >/dev/null 2>&1 || { $(SUDO) apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq chromium; }

demo: venv kafka
	$(BIN)/selfheal demo $(DEMO_ARGS)

test: venv kafka browser
	$(BIN)/python -m pytest $(PYTEST_ARGS)

unit: venv
	$(BIN)/python -m pytest tests/unit $(PYTEST_ARGS)

lint: venv
	$(BIN)/ruff check src tests

bench: venv kafka
	$(BIN)/selfheal bench $(BENCH_ARGS)

bench-drift: venv
	$(BIN)/selfheal bench-drift $(BENCH_ARGS)

bench-drift-worker: venv kafka
	$(BIN)/selfheal bench-drift-worker $(BENCH_ARGS)

bench-canary: venv
	$(BIN)/selfheal bench-canary $(BENCH_ARGS)

bench-otlp: venv kafka
	$(BIN)/selfheal bench-otlp $(BENCH_ARGS)

bench-phi: venv
	$(BIN)/selfheal bench-phi $(BENCH_ARGS)

chaos: venv kafka
	$(BIN)/selfheal chaos $(CHAOS_ARGS)

clean: kafka-stop
	rm -rf .local demo-summary.json
