# Two commands: `make demo` (set up and audit the bundled models) and `make test`.
# Each creates the virtual environment when it is missing.
VENV    ?= .venv
PY      := $(VENV)/bin/python
AUDITOR := $(VENV)/bin/auditor
STAMP   := $(VENV)/.installed
MODELS  := fixtures/models

.PHONY: setup demo test test-fast bench fixtures clean

setup: $(STAMP)

# torch/torchvision pinned here (the releases on this machine's disk); pyproject keeps a range.
$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --no-cache-dir torch==2.14.1 torchvision==0.29.1
	$(VENV)/bin/pip install --quiet --no-cache-dir -e '.[test]'
	touch $(STAMP)

# The backdoored model must fail the gate (exit 1) and be repaired; the clean one must pass (exit 0).
demo: $(STAMP)
	@echo "== auditing the backdoored fixture (expected: exit 1, class 7 flagged, repaired model written)"
	@$(AUDITOR) scan $(MODELS)/badnets_cnn.pt --trigger $(MODELS)/badnets_cnn.trigger.json \
		--json reports/badnets_cnn.pt.json --junitxml reports/badnets_cnn.pt.xml \
		--sarif reports/badnets_cnn.pt.sarif --cyclonedx reports/badnets_cnn.pt.cdx.json; \
		code=$$?; echo "exit code $$code"; test $$code -eq 1
	@echo "== auditing the clean fixture (expected: exit 0)"
	@$(AUDITOR) scan $(MODELS)/clean_cnn.onnx --json reports/clean_cnn.onnx.json \
		--sarif reports/clean_cnn.onnx.sarif --cyclonedx reports/clean_cnn.onnx.cdx.json; \
		code=$$?; echo "exit code $$code"; test $$code -eq 0
	@echo "== open reports/badnets_cnn.pt.html and reports/clean_cnn.onnx.html in a browser"

test: $(STAMP)
	$(PY) -m pytest tests -q

test-fast: $(STAMP)
	$(PY) -m pytest tests -q -m "not slow"

bench: $(STAMP)
	$(PY) bench/bench_audit.py

# Rebuilds the committed fixtures from the real Fashion-MNIST (needs: apt-get install dataset-fashion-mnist).
fixtures: $(STAMP)
	$(PY) fixtures/build.py

clean:
	rm -rf reports/*.html reports/*.json reports/*.xml reports/*.sarif reports/*.repaired.*
