# SeekServe developer entry points. `make serve` and `make test` work on a fresh clone.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
HOST   ?= 127.0.0.1
PORT   ?= 8000
MODEL  ?= smollm2-135m

.PHONY: install serve test test-clients lint format bench clean

install: $(STAMP)  ## create .venv and install SeekServe with its dev tools (idempotent)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

serve: install  ## fetch the default model (first run) and serve it as deepseek-chat
	$(BIN)/seekserve pull $(MODEL)
	$(BIN)/seekserve serve --model $(MODEL) --served-model-name deepseek-chat \
		--host $(HOST) --port $(PORT)

test: install  ## the whole test suite (CPU); with node/npm on PATH it runs the Node SDK test too
	$(BIN)/python -m pytest

test-clients: install  ## only the client tests: openai (Python, Node), LangChain, `seekserve chat`
	$(BIN)/python -m pytest tests/clients

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

bench: install  ## SeekServe beside llama.cpp's server (see benchmarks/README.md)
	$(BIN)/seekserve bench compare

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
