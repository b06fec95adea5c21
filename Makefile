# The README's two commands: `make run` and `make test`. Each does all set-up first.
.PHONY: run test setup setup-dev bench

run: setup
	.venv/bin/streamlit run streamlit_app.py

test: setup-dev
	.venv/bin/python -m pytest

setup:
	bash scripts/setup.sh

setup-dev:
	bash scripts/setup.sh --dev
