# Two entry points, each doing its own set-up on a fresh machine:
#   make demo   - run the appliance's main job end to end on the embedded defaults
#   make test   - lint, type-check, check the import rules and run the tests
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
# torch is pinned (constraints.txt) and installed first: any other torch requirement makes
# pip fetch the CUDA build with gigabytes of dependencies.
PIP    := $(BIN)/pip install --disable-pip-version-check -c constraints.txt

.PHONY: install demo test lint typecheck imports clean

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP) --upgrade pip
	$(PIP) torch==2.13.0
	$(PIP) -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/appliance demo --workdir demo-output

lint: $(STAMP)
	$(BIN)/ruff check appliance dicom_bridge models tests benchmarks

typecheck: $(STAMP)
	$(BIN)/mypy

# The import rules of DESIGN.md as import-linter contracts ([tool.importlinter] in
# pyproject.toml): layers between the packages and the rooms of appliance/.
imports: $(STAMP)
	$(BIN)/lint-imports

# OMP_WAIT_POLICY=PASSIVE: the tests start appliance and Flower processes beside pytest;
# spinning OpenMP threads would burn the CPUs they wait for.
test: lint typecheck imports
	OMP_WAIT_POLICY=PASSIVE $(BIN)/pytest -q --durations=30

clean:
	rm -rf $(VENV) demo-output .pytest_cache .mypy_cache .ruff_cache
