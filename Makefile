# `make test` and `make demo` create .venv and install everything on a fresh machine.
#   TORCH="torch==X torchvision==Y"   choose the torch build ("" = keep the torch the venv already has,
#                                     e.g. with VENV_FLAGS=--system-site-packages to use a system-wide torch);
#                                     another value reinstalls on the next make
#   PYTHON, VENV_FLAGS                used when .venv is created (`make clean-venv` to change them)
PYTHON ?= python3
VENV ?= .venv
VENV_FLAGS ?=
TORCH ?= torch==2.14.1 torchvision==0.29.1
PY := $(VENV)/bin/python
PYTEST_ARGS ?=

.PHONY: install test demo clean-venv FORCE

install: $(VENV)/.installed

# The TORCH setting of the last install, rewritten (and so newer than .installed) only when it changes.
$(VENV)/.torch: FORCE
	@mkdir -p $(VENV)
	@echo '$(TORCH)' | cmp -s - $@ || echo '$(TORCH)' > $@

$(VENV)/.installed: setup.py requirements.txt tools/install_detectron2.py $(VENV)/.torch
	test -x $(PY) || $(PYTHON) -m venv $(VENV_FLAGS) $(VENV)
	$(if $(strip $(TORCH)),$(PY) -m pip install $(TORCH))
	$(PY) -m pip install -r requirements.txt pytest
	$(PY) tools/install_detectron2.py
	$(PY) -m pip install --no-deps --no-build-isolation -e .
	touch $@

test: install
	$(PY) -m pytest -q $(PYTEST_ARGS) tests

demo: install
	$(PY) -m person_search.cli demo

clean-venv:
	rm -rf $(VENV)
