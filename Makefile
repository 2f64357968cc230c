# make demo / make test: each sets up .venv on first use, then runs.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test lint typecheck datasets model model-physics bench-model study bench clean

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

# mypy --strict over daemon/ (pyproject.toml [tool.mypy]): Any only at JSON, pydantic and **kwargs boundaries.
typecheck: $(VENV)/.dev-installed
	$(BIN)/mypy

test: $(VENV)/.dev-installed lint typecheck
	$(BIN)/python -m pytest -q

# The twin's datasets: the paper's sets (Table 1) and the harder ones, each reproducible from its seed.
DATASETS := n14 n13 n10 n6 far low-dose large-aperture
datasets: $(DATASETS:%=data/%.npz)

data/%.npz: | $(VENV)/.dev-installed
	mkdir -p data
	$(BIN)/python tools/acquire.py --twin $* --out $@

# The shipped model (docs/models.md, docs/model-design.md): the spot network, a learned CNN that
# finds the spot in each frame, trained on 8000 widely randomised traced-twin stacks (rendering
# about 20 min, training about 30 min on 2 cores), one column and one scene held out; float32
# .tflite with its card, and the int8 variant beside the run for the cost study. Then the frame
# model is tuned on whole stacks through the daemon's walk (tools/tune_spotnet.py: 60 truth-labelled
# stacks on each of the 18 training cells, as `temalign learn` tunes a column's; about 5 min).
# Package data (temalign.shipped): the wheel carries it, a config names it `spotnet`. Then its
# evaluation through the daemon's path on every traced column and scene, into its card (the daemon
# refuses a model without one, or over estimator.max_model_rmse_percent): about 5 minutes.
SPOTNET := daemon/temalign/models/spotnet.tflite
model: | $(VENV)/.dev-installed
	mkdir -p data
	$(BIN)/python tools/train_spotnet.py --stacks 8000 --epochs 20 --seed 11 --out runs/spotnet \
	  --cache data/spotnet-train-11.npz --tflite runs/spotnet/spotnet-frames.tflite \
	  --int8 runs/spotnet/spotnet.int8.tflite
	$(BIN)/python tools/tune_spotnet.py --model runs/spotnet/spotnet-frames.tflite --out $(SPOTNET) \
	  --stores data/tune-stores --twin-cache data/learn-twin-300-21.npz
	$(BIN)/python tools/evaluate.py $(SPOTNET) --stacks 100 --jobs 2

# The baseline kept selectable (`estimator.model: wobble_physics`): the twin's geometry as TFLite
# ops, calibrated on the twin's N 10/13 (5 seeded runs, the best kept).
SHIPPED := daemon/temalign/models/wobble_physics.tflite
model-physics: data/n10.npz data/n13.npz | $(VENV)/.dev-installed
	$(BIN)/python tools/train.py --data data/n10.npz data/n13.npz --model wobble_physics \
	  --preprocess temalign.estimate.preprocess:physics_128 --label truth --scaling fixed \
	  --loss huber --learning-rate 0.0003 --epochs 5 --runs 5 --seed 0 --out runs/shipped
	$(BIN)/python tools/convert.py runs/shipped/best.keras --out $(SHIPPED) --latency-repeats 200 \
	  --frames any --evaluate-stacks 0
	$(BIN)/python tools/evaluate.py $(SHIPPED) --stacks 100 --jobs 1

bench-model: datasets | $(VENV)/.dev-installed
	$(BIN)/python tools/bench_shipped.py --model $(SHIPPED) --json docs/figures/bench-shipped.json \
	  --plot docs/figures/bench-shipped.png

study: datasets | $(VENV)/.dev-installed
	$(BIN)/python tools/study.py --out runs/study

# Issue 5's proof, each a script with a seed and a JSON result in bench-out/ (docs/benchmarks.md,
# docs/reliability.md): the 12-hour sessions, the cold starts, latency and footprint, the fault
# campaign with real SIGKILLs. About 20 minutes on 2 cores.
bench: | $(VENV)/.dev-installed
	mkdir -p bench-out
	$(BIN)/python tools/bench_session.py --seeds 10 --out bench-out
	$(BIN)/python tools/bench_coldstart.py --out bench-out
	$(BIN)/python tools/bench_footprint.py --out bench-out/footprint.json
	$(BIN)/python tools/fault_campaign.py --seed 0 --scenarios 1000 --kills 24 --daemon-rounds 3 --out bench-out/faults.json

clean:
	rm -rf $(VENV) build *.egg-info
