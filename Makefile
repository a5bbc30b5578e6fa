# Two entry points, each doing its own set-up on a fresh machine:
#   make demo   - run the appliance's main job end to end on the embedded defaults
#   make test   - lint, type-check, check the import rules and run the tests
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
# torch is pinned (constraints.txt) and installed first: any other torch requirement makes
# pip fetch the CUDA build with gigabytes of dependencies. uv installs (pip bootstraps it
# into the venv): the same resolution as pip, about 15x faster on a fresh machine; it
# reads pip's PIP_FIND_LINKS where a machine keeps local wheels (a CPU torch). Bytecode is
# compiled at install time, as pip does: with PYTHONDONTWRITEBYTECODE set (as on CI), every
# process would otherwise recompile torch and MONAI from source on import.
UV     := $(BIN)/uv pip install --compile-bytecode --python $(BIN)/python -c constraints.txt \
          $(if $(PIP_FIND_LINKS),--find-links $(PIP_FIND_LINKS))

.PHONY: install demo test lint typecheck imports ohif clean

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --disable-pip-version-check -q -c constraints.txt uv
	$(UV) torch==2.13.0
	$(UV) -e '.[dev]'
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

# The OHIF viewer for the browser tests, from the npm registry (checked, unpacked once
# under .cache/); Chromium itself comes from the system (apt-get install chromium).
ohif: $(STAMP)
	$(BIN)/python -m tests.fetch_ohif

# OMP_WAIT_POLICY=PASSIVE: the tests start appliance and Flower processes beside pytest;
# spinning OpenMP threads would burn the CPUs they wait for.
# Three passes: (1) most tests on TEST_WORKERS processes (pytest-xdist, a file per worker
# at a time, in collection order: tests/conftest.py puts the files with slow tests first;
# xdist would otherwise order files by their number of tests); (2) the ``serial`` ones,
# the interop tests with real services (except those marked ``unhurried``), apart from the
# unit tests and two at a time: they mostly wait on their peers (associations, polling,
# Flower's heartbeats); (3) the tests marked ``alone``, which time themselves (bounds on
# elapsed time, short deadlines, timed start-ups and stops), one at a time. Every pass
# always runs; the target fails if any did.
TEST_WORKERS ?= auto
test: lint typecheck imports ohif
	@status=0; \
	OMP_WAIT_POLICY=PASSIVE $(BIN)/pytest -q -n $(TEST_WORKERS) --dist loadfile \
	  --no-loadscope-reorder -m "not serial" --durations=15 || status=1; \
	OMP_WAIT_POLICY=PASSIVE $(BIN)/pytest -q -n 2 --dist loadfile --no-loadscope-reorder \
	  -m "serial and not alone" --durations=30 || status=1; \
	OMP_WAIT_POLICY=PASSIVE $(BIN)/pytest -q -m alone --durations=10 || status=1; \
	exit $$status

clean:
	rm -rf $(VENV) demo-output .pytest_cache .mypy_cache .ruff_cache .cache test-artefacts
