# Everything installs into .venv at the repository root.
PY ?= python3
VENV := .venv
STAMP := $(VENV)/.installed

.PHONY: demo test test-slow bench test-flower

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(VENV)/bin/pip install -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/collafuse-privacy demo

test: $(STAMP)
	$(VENV)/bin/python -m pytest

# the tests marked slow (long end-to-end runs on real data), which `make test` deselects
test-slow: $(STAMP)
	$(VENV)/bin/python -m pytest -m slow

# the Flower engine tests (optional extra; CI runs only the tests of the parties without Flower)
test-flower: $(STAMP)
	$(VENV)/bin/pip install -e '.[flower]'
	$(VENV)/bin/python -m pytest -m flower tests/test_flower.py

bench: $(STAMP)
	$(VENV)/bin/python benchmarks/bench_collafuse.py
	$(VENV)/bin/python benchmarks/bench_sampling.py
