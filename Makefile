# rnnlm: `make help` lists the targets. Variables can be overridden: make train CONFIG=configs/bpe.yaml
PYTHON     ?= python3
VENV       ?= .venv
TORCH_SPEC ?= torch==2.13.0
CONFIG     ?= configs/char.yaml
CORPUS     ?=
ARGS       ?=
RUN_DIR    ?= runs/char
NAME       ?= char

PY     := $(VENV)/bin/python
RNNLM  := $(VENV)/bin/rnnlm
STAMP  := $(VENV)/.installed

.DEFAULT_GOAL := help
.PHONY: help install data train test lint clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-8s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH_SPEC)"
	$(PY) -m pip install --quiet -e ".[train,serve,dev]"
	touch $(STAMP)

install: $(STAMP) ## make .venv with torch ($(TORCH_SPEC)) and an editable install of rnnlm
	@echo "rnnlm installed in $(VENV)"

data: $(STAMP) ## tokenize the corpus of CONFIG once (CORPUS=path overrides)
	$(RNNLM) prepare --config $(CONFIG) $(if $(CORPUS),--corpus $(CORPUS))

train: $(STAMP) ## train the default char model on tinyshakespeare (CONFIG, CORPUS, ARGS override)
	$(RNNLM) fit --config $(CONFIG) $(if $(CORPUS),--data.corpus $(CORPUS)) $(ARGS)

test: $(STAMP) ## run the test suite on CPU
	$(VENV)/bin/pytest -q

lint: $(STAMP) ## check the code with ruff
	$(VENV)/bin/ruff check src tests

clean: ## remove runs/, data/ caches and export/ models (keeps .venv)
	rm -rf runs data export/*/
