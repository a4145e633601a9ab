# The two commands of the README: `make demo` and `make test`. Both set up the
# environment first (idempotent: seconds when nothing changed). `make compat` builds the
# oldest supported stack (Python 3.9, torch 2.1.2, mmcv 2.1.0 built against it) in
# .venv-floor and runs the test suite there.
VENV ?= .venv
PY := $(VENV)/bin/python
FLOOR_VENV ?= .venv-floor
DEMO_CONFIG ?= configs/faster_rcnn_r50_dcn_asff_demo_coco-shapes.py
DEMO_WORK_DIR ?= work_dirs/demo
PYTEST_ARGS ?=

.PHONY: setup demo test compat clean-demo

setup:
	VENV=$(abspath $(VENV)) bash scripts/setup_env.sh

# Train the demo twin on the embedded data (generated on first use), then evaluate
# the final checkpoint with tools/test.py: prints COCO box metrics.
demo: setup
	$(PY) tools/train.py $(DEMO_CONFIG) --work-dir $(DEMO_WORK_DIR)
	$(PY) tools/test.py $(DEMO_CONFIG) $$(cat $(DEMO_WORK_DIR)/last_checkpoint) --work-dir $(DEMO_WORK_DIR)

# The linter first (ruff, configured in pyproject.toml), then the suite.
test: setup
	$(PY) -m ruff check .
	$(PY) -m pytest $(PYTEST_ARGS)

compat:
	STACK=floor VENV=$(abspath $(FLOOR_VENV)) bash scripts/setup_env.sh
	$(FLOOR_VENV)/bin/ruff check .
	$(FLOOR_VENV)/bin/python -m pytest $(PYTEST_ARGS)

clean-demo:
	rm -rf $(DEMO_WORK_DIR)
