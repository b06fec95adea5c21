# The README's two commands: `make run` and `make test`. Each does all set-up first.
.PHONY: run test test-fast lint setup setup-dev bench bench-load

run: setup
	.venv/bin/streamlit run streamlit_app.py

# Everything, browser and multi-process tests included (CI runs this). Two workers, one test file
# each at a time: many tests wait on worker processes, servers and browsers, so two share the cores well.
test: setup-dev lint
	TS_BROWSER_REQUIRED=1 .venv/bin/python -m pytest -n 2 --dist loadfile --no-loadscope-reorder

# Day-to-day: the tests that start no worker processes and no browser.
test-fast: setup-dev
	.venv/bin/python -m pytest -m "not e2e and not slow"

# Lint (ruff; never `ruff format`, which would rewrite files) and type-check the engine (mypy).
lint: setup-dev
	.venv/bin/ruff check .
	.venv/bin/mypy

setup:
	bash scripts/setup.sh

setup-dev:
	bash scripts/setup.sh --dev

# The hosted app under 8 browser sessions while a fine-tune trains (test tooling in tests/load/, not product).
bench-load: setup-dev
	.venv/bin/python -m tests.load --sessions 8
