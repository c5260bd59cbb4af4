# medtune: `make help` lists the targets.
PYTHON ?= python3
TORCH_VERSION ?= 2.13.0
export MEDTUNE_DATA_DIR ?= $(abspath ../shared/data)
ARGS ?=

.DEFAULT_GOAL := help
.PHONY: help install test test-slow test-gpu lint format demo train sweep bench report export clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-10s %s\n", $$1, $$2}'

install:  ## install medtune, CPU torch (unless torch is already installed), the dev tools; + Liger with CUDA torch
	$(PYTHON) -m pip install -q --upgrade pip
	@$(PYTHON) -c "import torch" 2>/dev/null && echo "torch already installed: keeping it" || \
		$(PYTHON) -m pip install -q torch==$(TORCH_VERSION)
	@$(PYTHON) -c "import torch, sys; sys.exit(0 if torch.version.cuda else 1)" 2>/dev/null \
		&& $(PYTHON) -m pip install -q -e ".[dev,gpu]" || $(PYTHON) -m pip install -q -e ".[dev]"
	$(PYTHON) -c "import medtune, torch, transformers, peft; print('medtune', medtune.__version__, '| torch', torch.__version__, '| transformers', transformers.__version__, '| peft', peft.__version__)"

test:  ## run the default test suite (CPU, minutes; slow and gpu tests excluded)
	$(PYTHON) -m pytest -q

test-slow:  ## run the slow tests too (still CPU)
	$(PYTHON) -m pytest -q -m "not gpu"

test-gpu:  ## run the GPU tests (on a CUDA machine)
	$(PYTHON) -m pytest -q -m gpu

lint:  ## ruff check and format check
	$(PYTHON) -m ruff check .
	$(PYTHON) -m ruff format --check .

format:  ## ruff format and autofix
	$(PYTHON) -m ruff format .
	$(PYTHON) -m ruff check --fix .

demo:  ## train-then-evaluate on built-in defaults (Gemma 3 270M, built-in sample data, CPU, offline)
	$(PYTHON) -m medtune.train $(ARGS)

train:  ## train one experiment: make train ARGS="+experiment=mix_10_3"
	$(PYTHON) -m medtune.train $(ARGS)

sweep:  ## the ratio sweep: make sweep ARGS="seed=0,1,2"
	$(PYTHON) -m medtune.train -m +experiment=mix_sweep $(ARGS)

bench:  ## efficiency benchmark (GPU): writes experiments/results/efficiency/
	$(PYTHON) -m medtune.bench $(ARGS)

report:  ## report over a sweep directory: make report DIR=runs/multirun/...
	$(PYTHON) -m medtune.report $(DIR) $(ARGS)

export:  ## merge a run's adapter and export it, checked: make export DIR=runs/... ARGS="--format gguf --quant q8_0"
	$(PYTHON) -m medtune.export $(DIR) $(ARGS)

clean:  ## remove caches and local run outputs (not the model/data cache in ~/.cache/medtune)
	rm -rf .pytest_cache .ruff_cache .hypothesis build *.egg-info outputs multirun
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
