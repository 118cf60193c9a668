# The two set-up commands of the README.  Each creates .venv on first use (pinned torch from
# constraints.txt: a CPU build where one is on disk, PyPI's default build elsewhere).
VENV ?= .venv
PY := $(VENV)/bin/python
OUT ?= runs/demo
PRESET ?= cpu

.PHONY: demo test lint install

$(VENV)/.installed: pyproject.toml constraints.txt
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e ".[dev]"
	touch $@

install: $(VENV)/.installed

demo: install
	$(VENV)/bin/leakaudit demo --out $(OUT) --preset $(PRESET)

test: install
	$(VENV)/bin/pytest

lint: install
	$(VENV)/bin/ruff check leakaudit tests benchmarks
