# rnnlm: `make help` lists the targets. Variables can be overridden: make train CONFIG=configs/bpe.yaml
PYTHON     ?= python3
VENV       ?= .venv
TORCH_SPEC ?= torch==2.13.0
CONFIG     ?= configs/char.yaml
CORPUS     ?=
ARGS       ?=
RUN_DIR    ?= runs/char
NAME       ?= char
CKPT       ?= $(RUN_DIR)/checkpoints/best.ckpt
QUANTIZE   ?=
PROMPT     ?=
PORT       ?= 8080

PY     := $(VENV)/bin/python
RNNLM  := $(VENV)/bin/rnnlm
STAMP  := $(VENV)/.installed
JS     := serve/js
JS_STAMP := $(JS)/node_modules/.installed

.DEFAULT_GOAL := help
.PHONY: help install data train export sample serve web test bench lint clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-8s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml setup.py src/rnnlm/runtime/_choose.c
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH_SPEC)"
	$(PY) -m pip install --quiet -e ".[train,serve,dev]"
	touch $(STAMP)

# The JS package's dependencies, from its lockfile. ONNXRUNTIME_NODE_INSTALL=skip: onnxruntime-node's install
# script would fetch CUDA binaries from outside the package registries; its CPU binaries ship in the package.
$(JS_STAMP): $(JS)/package-lock.json
	@if command -v npm >/dev/null; then \
		cd $(JS) && ONNXRUNTIME_NODE_INSTALL=skip npm ci --no-audit --no-fund --loglevel=error && touch node_modules/.installed; \
	else echo "npm is absent: the JS package (serve/js) is not installed and its tests will be skipped"; fi

install: $(STAMP) $(JS_STAMP) ## make .venv with torch (TORCH_SPEC=torch==2.13.0) and an editable install of rnnlm; npm ci in serve/js
	@echo "rnnlm installed in $(VENV)"

data: $(STAMP) ## tokenize the corpus of CONFIG once (CORPUS=path overrides)
	$(RNNLM) prepare --config $(CONFIG) $(if $(CORPUS),--corpus $(CORPUS))

train: $(STAMP) ## train the default char model on tinyshakespeare (CONFIG, CORPUS, ARGS override)
	$(RNNLM) fit --config $(CONFIG) $(if $(CORPUS),--data.corpus $(CORPUS)) $(ARGS)

export: $(STAMP) ## write export/NAME from the best checkpoint of the last train (CKPT, QUANTIZE=int8 override)
	$(RNNLM) export $(CKPT) --out export/$(NAME) $(if $(QUANTIZE),--quantize $(QUANTIZE))

sample: $(STAMP) ## stream text from export/NAME, torch-free (PROMPT="ROMEO:" ARGS="-n 500 --temperature 0.8")
	$(RNNLM) sample export/$(NAME) --prompt "$(PROMPT)" $(ARGS)

serve: $(STAMP) ## serve export/NAME over HTTP on 127.0.0.1:8000, OpenAI completions (ARGS="--port 9000 --api-key KEY")
	$(RNNLM) serve export/$(NAME) $(ARGS)

web: $(JS_STAMP) ## serve a page that samples export/NAME in the browser on http://127.0.0.1:PORT (PORT=8080)
	node serve/web/server.js --port $(PORT) --export export/$(NAME)

test: $(STAMP) $(JS_STAMP) ## run the test suite on CPU (the JS and browser tests where node and chromium exist)
	$(VENV)/bin/pytest -q -rs

bench: $(STAMP) ## run every benchmark in benchmarks/ (training speed vs nn.RNN, ...); table to benchmarks/results/
	$(PY) benchmarks/run.py

lint: $(STAMP) ## check the code with ruff
	$(VENV)/bin/ruff check src tests benchmarks serve

clean: ## remove runs/, data/ caches and export/ models (keeps .venv)
	rm -rf runs data export/*/
