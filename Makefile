# `make demo` and `make test` set everything up themselves: a .venv with moatkit installed (editable).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export TF_USE_LEGACY_KERAS := 1

.PHONY: demo test test-all bench-iterate bench bench-monitor-reference conformance install clean beam-venv prometheus \
	browser

$(STAMP): setup.py
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check --upgrade pip
	$(BIN)/python -m pip install -q --disable-pip-version-check -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

# Apache Beam caps protobuf < 7 while the main venv's packages need 7, so Beam gets its own venv: our packages (no
# deps, editable) plus the `beam` extra from setup.py (with TensorFlow, which accepts protobuf 6, for RunInference).
# data/beam_pipeline.py and app/opinion/beam_score.py run there; tests call them by subprocess.
BEAM_VENV := .venv-beam
BEAM_STAMP := $(BEAM_VENV)/.installed
$(BEAM_STAMP): setup.py
	test -x $(BEAM_VENV)/bin/python || $(PYTHON) -m venv $(BEAM_VENV)
	$(BEAM_VENV)/bin/python -m pip install -q --disable-pip-version-check --no-deps -e .
	$(BEAM_VENV)/bin/python -c "from importlib.metadata import requires; print('\n'.join(r.split(';')[0] for r in requires('moatkit') if 'extra == \"beam\"' in r))" > $(BEAM_VENV)/requirements.txt
	$(BEAM_VENV)/bin/python -m pip install -q --disable-pip-version-check -r $(BEAM_VENV)/requirements.txt
	touch $(BEAM_STAMP)

beam-venv: $(BEAM_STAMP)

# Prometheus + promtool (Debian package `prometheus`) for tests/integration/test_prometheus_alerts.py, which checks
# serving/deploy/prometheus/. CI runs as root and installs it once; elsewhere a missing binary is a note and those
# tests skip. The stamp is only written once both binaries exist, so a later run as root still installs them.
APT_STAMP := $(VENV)/.apt-installed
$(APT_STAMP):
	@if command -v prometheus >/dev/null && command -v promtool >/dev/null; then :; \
	elif [ "$$(id -u)" = 0 ]; then \
	  apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends prometheus; \
	else echo "note: prometheus/promtool not installed and not root: run 'sudo make prometheus'" \
	  "(the Prometheus alert tests skip until then)"; fi
	@if command -v prometheus >/dev/null && command -v promtool >/dev/null; then \
	  mkdir -p $(VENV) && touch $(APT_STAMP); fi

prometheus: $(APT_STAMP)

# Chromium + chromedriver (Debian packages `chromium`, `chromium-driver`) for tests/integration/test_support_browser.py,
# which drives the support chat page headless. Installed like Prometheus above: as root once, elsewhere a note and
# the browser test skips; the stamp is only written once both binaries exist.
BROWSER_STAMP := $(VENV)/.browser-installed
$(BROWSER_STAMP):
	@if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then :; \
	elif [ "$$(id -u)" = 0 ]; then \
	  apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
	    chromium chromium-driver; \
	else echo "note: chromium/chromedriver not installed and not root: run 'sudo make browser'" \
	  "(the support chat browser test skips until then)"; fi
	@if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then \
	  mkdir -p $(VENV) && touch $(BROWSER_STAMP); fi

browser: $(BROWSER_STAMP)

demo: $(STAMP)
	$(BIN)/moat demo

test: $(STAMP) $(BEAM_STAMP) $(APT_STAMP) $(BROWSER_STAMP)
	$(BIN)/python -m pytest -q --durations=30 tests

test-all: $(STAMP) $(BEAM_STAMP) $(APT_STAMP) $(BROWSER_STAMP)
	$(BIN)/python -m pytest -q -m "slow or not slow" tests

# TensorFlow Serving's own end-to-end test file (tests/third_party/tensorflow_serving) against moat-model-server.
conformance: $(STAMP)
	$(BIN)/python -m pytest -q -m "slow or not slow" tests/conformance/test_tf_serving_suite.py

bench: $(STAMP)
	$(BIN)/moat bench

# Evidently 0.7 and alibi-detect on the monitor bench's logged streams, side by side with ours (docs/results.md).
# Their own venv: alibi-detect is Business-Source licensed (a bench reference, never a moatkit dependency) and both
# pin numpy/pandas/protobuf/TensorFlow versions that clash with ours. About 16 min on 2 cores.
DRIFTREF_VENV := .venv-driftref
$(DRIFTREF_VENV)/.installed:
	test -x $(DRIFTREF_VENV)/bin/python || $(PYTHON) -m venv $(DRIFTREF_VENV)
	$(DRIFTREF_VENV)/bin/python -m pip install -q --disable-pip-version-check "evidently==0.7.23" \
	    "alibi-detect[tensorflow]==0.13.0"
	touch $@

bench-monitor-reference: $(STAMP) $(DRIFTREF_VENV)/.installed
	test -d bench/results/monitor_streams || $(BIN)/moat bench --set 'benchmarks=[monitor]'
	TF_CPP_MIN_LOG_LEVEL=2 $(DRIFTREF_VENV)/bin/python app/bench_monitor_reference.py \
	    --data bench/results/monitor_streams --out bench/results/monitor_reference.json

# The iteration scenario (docs/iterate.md): MR model → amazon / nyt traffic → moat iterate, loop vs random selection
# over seeds, a shuffled-label candidate, a real canary + promotion under 16 clients. Needs the demo's version 1;
# about 25 min per domain at 3 seeds on 2 cores.
bench-iterate: $(STAMP)
	test -d artifacts/models/sentiment/1 || $(BIN)/moat demo
	$(BIN)/python -m moatkit.app.bench_iterate --out bench/results/iterate

clean:
	rm -rf $(VENV) $(BEAM_VENV) $(DRIFTREF_VENV) build *.egg-info .pytest_cache
