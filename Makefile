PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test bench clean image

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test,bench]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/segsync demo $(DEMO_ARGS)

test: $(STAMP)
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

bench: $(STAMP)
	$(BIN)/python bench/push_latency.py
	$(BIN)/python bench/backfill_throughput.py
	$(BIN)/python bench/anti_entropy_cost.py
	$(BIN)/python bench/tls_overhead.py
	$(BIN)/python bench/cluster_bandwidth.py
	$(BIN)/python bench/scrub.py
	$(BIN)/python bench/legacy_backfill.py
	$(BIN)/python bench/coverage_render.py
	$(BIN)/python bench/bandwidth.py

# segsync:latest with Docker where its engine answers, else buildah (vfs storage); makes
# the debian:13 base with mmdebstrap where no registry is reachable; prints size, layers
image:
	$(PYTHON) deploy/build_image.py $(IMAGE_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .hypothesis
