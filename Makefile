# One command sets up and runs each job; the set-up (a virtual environment with the package
# installed) is shared and redone only when pyproject.toml changes.
PYTHON ?= python3
VENV ?= .venv
BIN = $(VENV)/bin

.PHONY: demo test bench docs clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -e '.[test]'
	touch $@

# Train the default VAE on the embedded 8x8 digits; writes runs/demo/ (resumes a stopped run).
demo: $(BIN)/.installed
	$(BIN)/pyro-vae train --out runs/demo $$(test -f runs/demo/checkpoint.pt && echo --resume)

# The whole test suite (what CI runs).
test: $(BIN)/.installed
	$(BIN)/python -m pytest

# The docs site into site/, strict: a broken link or reference, or a griffe warning, fails the build.
$(BIN)/.docs-installed: $(BIN)/.installed
	$(BIN)/pip install -e '.[test,docs]'
	touch $@

docs: $(BIN)/.docs-installed
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

bench: $(BIN)/.installed
	$(BIN)/python benchmarks/train_step.py

clean:
	rm -rf runs .pytest_cache site
