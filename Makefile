# mccp-bridge: common tasks. Every target sets up what it needs.
.PHONY: install run test lint bench dist clean

install:            ## venv with the bridge (editable)
	./scripts/setup-venv.sh

run:                ## set up and run the bridge on its embedded default
	./scripts/run.sh

test:               ## install peers + venv, then every test (lint included) in a loopback-only netns
	./scripts/test.sh

lint:               ## ruff + mypy strict
	./scripts/setup-venv.sh test
	.venv/bin/ruff check src tests bench
	.venv/bin/ruff format --check src tests bench
	.venv/bin/mypy

bench:              ## the benchmarks (bench/README.md); knobs: make bench BENCH_ARGS="--calls 200 --seconds 5 --reps 1"
	./scripts/setup-venv.sh test
	./scripts/install-peers.sh
	./scripts/netns_run.sh .venv/bin/python -m bench.run $(BENCH_ARGS)

dist:               ## single-file executable dist/mccp-bridge.pyz (shiv)
	./scripts/setup-venv.sh test
	rm -rf dist build && mkdir -p dist
	.venv/bin/shiv --compressed -p '/usr/bin/env python3' -c mccp-bridge -o dist/mccp-bridge.pyz .

clean:
	rm -rf .venv dist build .mypy_cache .ruff_cache .pytest_cache
