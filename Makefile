# Conveniences for developers; everything here also works as `python3 .ci/dev.py ...`.
.PHONY: run test bench lint

run:
	python3 .ci/dev.py run

test:
	python3 .ci/dev.py test

bench:
	python3 .ci/dev.py bench

lint:
	.venv/bin/ruff check . && .venv/bin/ruff format --check . && .venv/bin/mypy
