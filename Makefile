# Two commands from a fresh clone: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
RUN ?= runs/digits

.PHONY: demo test test-fast test-numerics venv clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# The CPU build of torch first (a file on this machine's disk); the package then accepts it.
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

venv: $(VENV)/.installed

demo: venv
	$(VENV)/bin/vaekit train --dataset digits --out $(RUN) --overwrite
	$(VENV)/bin/vaekit evaluate $(RUN)
	@echo
	@echo "The run is in $(RUN)/; open $(RUN)/report.html in a browser for its numbers, curves and pictures."
	@echo "vaekit is installed in $(VENV): run 'source $(VENV)/bin/activate' to put it on your PATH, then"
	@echo "  vaekit explore $(RUN)    # walk its latent space at http://127.0.0.1:8000/"

test: venv
	$(PY) -m pytest -q

# The numerics-sensitive tests again under the other ATen CPU kernels than this CPU's default (AVX-512
# machines: avx2; others: default): float32 sums round differently there, and the tests must not care.
# Not the torch.compile tests: inductor generates code for the CPU it finds, not for the forced ATen
# capability, and that mix gives NaN in torch 2.13 (a set-up no real machine has).
OTHER_CAPABILITY = $(shell grep -qw avx512f /proc/cpuinfo 2>/dev/null && echo avx2 || echo default)
NUMERICS_TESTS = tests/test_theory.py tests/test_evaluate.py tests/test_fast_paths.py tests/test_model.py \
	tests/test_tutorial.py tests/test_packaging.py
test-numerics: venv
	ATEN_CPU_CAPABILITY=$(OTHER_CAPABILITY) $(PY) -m pytest -q -m "not inductor" $(NUMERICS_TESTS)

test-fast: venv
	$(PY) -m pytest -q -m "not slow"

clean:
	rm -rf $(VENV) runs .pytest_cache

# docs/cli.md, the flag reference, is generated from the parser and the config dataclasses
# (tests/test_docs.py fails until it is regenerated after a flag changes).
.PHONY: docs
docs: venv
	$(PY) -m vaekit.docgen docs/cli.md
