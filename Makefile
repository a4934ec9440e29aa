# Every target sets itself up: a fresh clone needs nothing but python3 (3.11) and make.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)
export DAGSTER_HOME ?= $(CURDIR)/.dagster_home
export CSI_DATASET_DIR ?= data/demo
export CSI_TRAINING_DIR ?= training/$(notdir $(patsubst %/,%,$(CSI_DATASET_DIR)))
DEMO_WORKS ?= 24
DEMO_PERFS ?= 6
DEMO_SEED ?= 0
DEMO_SECONDS ?= 30

.PHONY: setup demo test ui serve bench clean-demo

setup: $(STAMP) $(DAGSTER_HOME)/dagster.yaml

$(STAMP):
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	rm -f $(VENV)/.installed-* && touch $@

$(DAGSTER_HOME)/dagster.yaml: dagster.yaml
	mkdir -p $(DAGSTER_HOME) && cp dagster.yaml $@

$(CSI_DATASET_DIR)/dataset.txt: | $(STAMP)
	$(BIN)/csi synth $(CSI_DATASET_DIR) --works $(DEMO_WORKS) --perfs $(DEMO_PERFS) --seed $(DEMO_SEED) \
		--seconds $(DEMO_SECONDS)

# One torch thread: tiny models gain nothing from a second one (measured: 2 threads on a busy 2-core machine ran
# an epoch 10x slower). In-process execution: see dagster_demo_run.yaml.
# The dataset is a partition of every asset: `python -m csi_assets.partitions` registers it (and its labels) with
# the instance and prints its key (the folder's name); a label probe's partition is "<dataset>|<label>".
demo: setup $(CSI_DATASET_DIR)/dataset.txt
	dataset=$$($(BIN)/python -m csi_assets.partitions) && \
	OMP_NUM_THREADS=1 $(BIN)/dagster job execute -m csi_assets.definitions -j main -c dagster_demo_run.yaml \
		--tags "{\"dagster/partition\": \"$$dataset\"}" && \
	for label in $$($(BIN)/python -m csi_assets.labels); do \
		OMP_NUM_THREADS=1 $(BIN)/dagster asset materialize -m csi_assets.definitions --select label_probe \
			--partition "$$dataset|$$label" || exit 1; \
	done
	@$(BIN)/python -m csi_assets.demo_summary

test: setup
	bash scripts/install_browser.sh
	$(BIN)/python -m pytest -q

ui: setup
	$(BIN)/dagster dev -h 127.0.0.1 -p 3000 -w workspace.yaml

# Identification over HTTP on the demo (after make demo): http://127.0.0.1:8000/docs
serve: setup
	OMP_NUM_THREADS=1 $(BIN)/csi serve --host 127.0.0.1 --port 8000

# bench/tempo_augmentation.py trains two models (tens of minutes): run it on its own.
bench: setup
	for b in $(filter-out bench/tempo_augmentation.py,$(wildcard bench/*.py)); do echo "== $$b"; $(BIN)/python $$b || exit 1; done

clean-demo:
	rm -rf $(CSI_DATASET_DIR)/wav $(CSI_DATASET_DIR)/sp_wav $(CSI_DATASET_DIR)/cqt_feat \
		$(CSI_DATASET_DIR)/*.txt $(CSI_DATASET_DIR)/*.map $(CSI_TRAINING_DIR)/checkpoints $(CSI_TRAINING_DIR)/logs \
		data/csi.duckdb data/csi.duckdb.wal data/csi.duckdb.index
