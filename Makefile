# make demo / make test: each sets up .venv on first use, then runs.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test lint datasets clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(VENV)/.dev-installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[dev,train]'
	touch $@

$(VENV)/.demo-installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[demo]'
	touch $@

demo: $(VENV)/.demo-installed
	$(BIN)/temalign demo

lint: $(VENV)/.dev-installed
	$(BIN)/ruff check .

test: $(VENV)/.dev-installed lint
	$(BIN)/python -m pytest -q

# The twin's datasets: the paper's sets (Table 1) and the harder ones, each reproducible from its seed.
DATASETS := n14 n13 n10 n6 far low-dose large-aperture
datasets: $(DATASETS:%=data/%.npz)

data/%.npz: | $(VENV)/.dev-installed
	mkdir -p data
	$(BIN)/python tools/acquire.py --twin $* --out $@

clean:
	rm -rf $(VENV) build *.egg-info
