.PHONY: install serve test lint format typecheck bench bench-peers bench-readme config fuzz

FUZZ_SECONDS ?= 60

install:
	python3 -m pip install -e ".[dev]"

serve:
	imagegate serve

test:
	./scripts/test.sh

lint:
	python3 -m ruff check .
	python3 -m ruff format --check .
	python3 -m mypy app
	hadolint Dockerfile

format:
	python3 -m ruff format .
	python3 -m ruff check --fix .

typecheck:
	python3 -m mypy app
	hadolint Dockerfile

bench:
	python3 -m bench

# The peer column of the bench table: LiteLLM in its own venv under bench/.work/peers/.
bench-peers:
	python3 -m bench.peers setup litellm

# Copy the newest results file's README table into README.md's performance section.
bench-readme:
	python3 -m bench.report --readme

# Coverage-guided fuzzing (atheris) of the body parsers and the image sniffer, FUZZ_SECONDS each.
fuzz:
	python3 -m fuzz all --seconds $(FUZZ_SECONDS)

# app/defaults/gateway.yaml is the one source of the shipped config; config/gateway.yaml is its copy.
config:
	cp app/defaults/gateway.yaml config/gateway.yaml
