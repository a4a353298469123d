# minimal_icl: every target sets itself up (a virtual environment in .venv).
#   make reproduce   the paper's figures and the further experiments, into results/
#   make test        the whole test suite, tutorials included
#   make tutorials   open the tutorials in JupyterLab
#   make html        render the executed tutorials to static HTML in site/
#   make student     write the student edition of the tutorials (solutions removed) to student/
#   make bench       time a training step against PyTorch and JAX (installs the bench extra)

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
export OPENBLAS_NUM_THREADS := 1
export OMP_NUM_THREADS := 1
export MKL_NUM_THREADS := 1
export MPLBACKEND := Agg

.PHONY: test reproduce train tutorials html student bench thorough clean

# Install once; reinstall only when pyproject.toml changes (the package is editable).
$(BIN)/.installed-test: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@

# The tutorials extra, and JupyterLab set (inside .venv only) to open the jupytext .py
# tutorials as notebooks on double-click.
$(BIN)/.installed-tutorials: pyproject.toml $(BIN)/.installed-test
	$(BIN)/python -m pip install --quiet -e '.[tutorials]'
	$(BIN)/jupytext-config --settings-file $(VENV)/share/jupyter/lab/settings/overrides.json set-default-viewer python
	touch $@

test: $(BIN)/.installed-test
	$(BIN)/python -m pytest -q

reproduce: $(BIN)/.installed-test
	$(BIN)/python -m minimal_icl reproduce --out results

train: $(BIN)/.installed-test
	$(BIN)/python -m minimal_icl train --out results

thorough: $(BIN)/.installed-test
	HYPOTHESIS_PROFILE=thorough $(BIN)/python -m pytest -q tests -k "property or theorem"

# The benchmark's peers, PyTorch and JAX: the bench extra.
# PyTorch's CPU build comes from its own index (PyPI's Linux torch is a CUDA build of GBs).
$(BIN)/.installed-bench: pyproject.toml $(BIN)/.installed-test
	$(BIN)/python -m pip install --quiet -e '.[bench]' --extra-index-url https://download.pytorch.org/whl/cpu
	touch $@

bench: $(BIN)/.installed-bench
	$(BIN)/python benchmarks/bench_train.py

tutorials: $(BIN)/.installed-tutorials
	$(BIN)/jupyter lab $(if $(filter 0,$(shell id -u)),--allow-root) tutorials/

html: $(BIN)/.installed-tutorials
	$(BIN)/python tutorials/render_html.py --out site

student: $(BIN)/.installed-test
	$(BIN)/python tutorials/make_student.py --out student

clean:
	rm -rf $(VENV) results site student .pytest_cache .hypothesis
