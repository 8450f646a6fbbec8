# make demo   installs everything and runs the end-to-end demo
# make test   installs everything and runs ruff, mypy and the test suite
# make fuzz   runs every fuzz harness (tests/fuzz/) for over a million inputs in all
# make faults  runs the fault-injection suite (kill points, S3 faults, disk full), prints its counts
.PHONY: install demo test lint typecheck pytest fuzz faults bench bench-pg bench-s3 bench-prune clean

VENV := .venv
BIN := $(VENV)/bin

install:
	@scripts/bootstrap.sh

demo: install
	@$(BIN)/python demo/demo.py
	@$(BIN)/python demo/pg_demo.py
	@$(BIN)/python demo/redis_demo.py
	@$(BIN)/python demo/serve_demo.py

PYDIRS := $(wildcard src tests bench demo)

lint: install
	$(BIN)/ruff check $(PYDIRS)
	$(BIN)/ruff format --check $(PYDIRS)
	$(BIN)/python scripts/import_graph.py --check

typecheck: install
	$(BIN)/mypy

pytest: install
	$(BIN)/pytest -q -n 2

test: lint typecheck pytest

fuzz: install
	$(BIN)/python -m tests.fuzz

faults: install
	$(BIN)/pytest -q -n 2 tests/test_fault_injection.py tests/test_bad_input.py \
		-k "test_fault_injection or disk_full or full_disk or full_repository"

bench:
	@scripts/bootstrap.sh bench
	$(BIN)/python bench/run.py

bench-pg:
	@scripts/bootstrap.sh bench
	$(BIN)/python bench/pg_run.py

bench-prune:
	@scripts/bootstrap.sh bench
	$(BIN)/python bench/prune_run.py

bench-s3:
	@scripts/bootstrap.sh bench
	$(BIN)/python bench/s3_run.py

clean:
	rm -rf $(VENV) .tools .mypy_cache .ruff_cache .pytest_cache .hypothesis .fuzz
