# wukong — every target has a "## help" line; CI and pre-commit call these same targets.
PY ?= python3
.DEFAULT_GOAL := help

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

setup: ## install redis-server, Python deps, the Rust and Cython extensions
	./scripts/setup.sh

demo: setup ## set up, then run the seed examples on an embedded local cluster
	$(PY) -m wukong.demo

test: setup ## set up, then run the test suite, the built Lambda zip under Python 3.12, cargo test, clippy, ruff, mypy
	$(PY) -m pytest -q
	$(PY) executor/build.py --arch x86_64 --out dist
	WUKONG_LAMBDA_ZIP=dist/wukong-executor-x86_64.zip $(PY) -m pytest -q -m slow tests/test_lambda_zip.py
	$(PY) -m pytest -q -s -m slow tests/test_dask_suites.py
	cargo test --quiet
	cargo clippy --quiet --all-targets -- -D warnings
	$(MAKE) --no-print-directory lint

test-slow: setup ## the long-running tests only (the Lambda zip's included)
	$(PY) -m pytest -q -m slow

test-zip: setup ## build the Lambda zip, then run it under Python 3.12 and awslambdaric (tests/test_lambda_zip.py)
	$(PY) executor/build.py --arch x86_64 --out dist
	WUKONG_LAMBDA_ZIP=dist/wukong-executor-x86_64.zip $(PY) -m pytest -q -m slow tests/test_lambda_zip.py

lint: ## ruff (lint + format check), mypy, and cfn-lint on the CloudFormation templates
	ruff check wukong tests bench
	ruff format --check wukong tests bench
	mypy
	cfn-lint executor/*.yaml

dask-suites: setup ## Dask's own suites (array, bag, delayed) through wukong vs Dask's sync scheduler, the full selection
	WUKONG_DASK_SUITES=full $(PY) -m pytest -q -s -m slow tests/test_dask_suites.py

bench: setup ## the benchmark harness, small sizes (see bench/README.md)
	$(PY) -m bench --size small

bench-native: setup ## compiled vs reference: schedules, hashing, compression
	$(PY) -m bench.core
	$(PY) -m bench.native

lambda-zip: setup ## build the AWS Lambda deployment zip (x86_64) into dist/, with its glibc and size checks
	$(PY) executor/build.py --arch x86_64 --out dist

clean: ## remove build products
	rm -rf build dist target wukong/_core/*.c wukong/_core/*.so *.egg-info

.PHONY: help setup demo test test-slow test-zip lint bench bench-native lambda-zip clean
