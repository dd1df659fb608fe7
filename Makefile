# `make demo` and `make test` set up .venv themselves (only when its inputs changed).
PROFILE ?= cpu
VENV    ?= .venv
PY      := $(VENV)/bin/python
STAMP   := $(VENV)/.installed-$(PROFILE)
RUN     ?= runs/demo
PYTEST_ARGS ?=

.PHONY: install demo test lint bench clean

$(STAMP): pyproject.toml requirements/cpu.lock scripts/install.sh
	bash scripts/install.sh $(PROFILE)
	@touch $@

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/open-instruct run recipes/tiny.yaml --output $(RUN)

test: $(STAMP)
	$(PY) -m pytest -q -ra $(PYTEST_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check open_instruct reward_fns tests benchmarks
	$(VENV)/bin/ruff format --check open_instruct reward_fns tests benchmarks

bench: $(STAMP)
	$(PY) benchmarks/run_all.py

clean:
	rm -rf $(RUN) .pytest_cache
