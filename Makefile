# Two commands for a newcomer (see README.md):
#   make up-local   install, then run `mlflow-gcp up --local` against the local GCP emulator
#   make test       install, then run the whole test suite
#   make bench      install, then every performance measurement side by side with its baseline (one table, < 15 min)
.PHONY: install test lint up-local emulator bench

install:
	./scripts/install.sh

test: install
	.venv/bin/ruff check src tests benchmarks
	.venv/bin/pytest -n 2 --dist loadfile

lint:
	.venv/bin/ruff check src tests benchmarks
	.venv/bin/ruff format --check src tests benchmarks

emulator: install
	.venv/bin/mlflow-gcp emulator start

bench: install
	.venv/bin/python benchmarks/run_all.py

up-local: install
	.venv/bin/mlflow-gcp up --local
	@echo 'Use it:  eval "$$(.venv/bin/mlflow-gcp env --local)"  then any MLflow client.'
