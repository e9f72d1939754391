# Two commands set everything up on a fresh machine: `make demo` and `make test`.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=
# two pytest workers on 2 cores: most of the suite waits on Ray, Ray Train and Serve start-up, not the CPU
PYTEST_WORKERS ?= 2

.PHONY: venv demo test test-fast lint format bench clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[test]'
	touch $(STAMP)

venv: $(STAMP)

lint: $(STAMP)
	$(BIN)/lint-imports
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

test: $(STAMP) lint
	$(BIN)/python -m pytest -q -x --durations=15 -n $(PYTEST_WORKERS) --dist loadscope --no-loadscope-reorder $(PYTEST_ARGS)

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow" $(PYTEST_ARGS)

# --- demo (issue 6): the whole pipeline at laptop size, into demo-out/ (sizes overridable: make demo DEMO_SIMS=100000)
DEMO ?= demo-out
DEMO_PILOT ?= 20000
DEMO_SIMS ?= 20000
DEMO_TEST ?= 1000
# training runs to convergence (early stopping, patience 20, LR halved on plateaus); extra `farm train` flags go here
DEMO_TRAIN ?=
# both posteriors use flow matching (docs/evaluation.md: calibrated at demo size, ~4x cheaper to train than NSF);
# the summary network averages 2 samples before a CNN of 8-16-32 channels and draws 4 path points per trace
# (docs/evaluation.md, "make demo": ~2x cheaper per epoch than 16-32-32 on full-rate traces, and still more informative than the statistics)
DEMO_ESTIMATOR ?= flow-matching
DEMO_SN_ARCH ?= --arch cnn_input_pool=2 --arch 'cnn_channels=[8,16,32]' --arch time_samples=4
DEMO_EVAL ?= --n-obs 300 --n-samples 300
# the chips the demo's stores draw circuits from (ChipModel's default pool); the circuit-aware posterior
# (issue 25) is conditioned on their fingerprints, recorded once into $(DEMO)/circuits.zarr
DEMO_CHIPS ?= 0-7
DEMO_PORT ?= 8765
FARM := $(BIN)/farm
# the two trainings run side by side, one torch thread each (2 cores); the handcrafted posterior is
# evaluated while the summary network still trains
NPE_ARGS = --store $(DEMO)/train.zarr --prior $(DEMO)/restricted --estimator $(DEMO_ESTIMATOR) --cpus-per-worker 1 $(DEMO_TRAIN) -q

demo: $(STAMP)
	rm -rf $(DEMO) && mkdir -p $(DEMO)
	@echo "== 1/7 pilot simulation from the box prior"
	$(FARM) simulate --n $(DEMO_PILOT) --seed 1 --out $(DEMO)/pilot.zarr -q
	@echo "== 2/7 restriction classifier -> restricted prior"
	$(FARM) train classifier --store $(DEMO)/pilot.zarr --out $(DEMO)/restricted $(DEMO_TRAIN) -q
	@echo "== 3/7 training and held-out simulations from the restricted prior"
	$(FARM) simulate --n $(DEMO_SIMS) --seed 2 --prior $(DEMO)/restricted --out $(DEMO)/train.zarr -q
	$(FARM) simulate --n $(DEMO_TEST) --seed 3 --prior $(DEMO)/restricted --out $(DEMO)/test.zarr -q
	@echo "== 4/7 amortized posteriors side by side (handcrafted statistics, then circuit-aware: each trained, then evaluated; summary network: trained)"
	($(FARM) train npe $(NPE_ARGS) --features handcrafted --out $(DEMO)/npe-handcrafted && \
	  OMP_NUM_THREADS=1 $(FARM) evaluate --posterior $(DEMO)/npe-handcrafted --store $(DEMO)/test.zarr --out $(DEMO)/reports/handcrafted $(DEMO_EVAL) && \
	  $(FARM) fingerprint --chip-ids $(DEMO_CHIPS) --seed 4 --out $(DEMO)/circuits.zarr -q && \
	  $(FARM) train npe $(NPE_ARGS) --features handcrafted --circuits $(DEMO)/circuits.zarr --out $(DEMO)/npe-circuit && \
	  OMP_NUM_THREADS=1 $(FARM) evaluate --posterior $(DEMO)/npe-circuit --circuits $(DEMO)/circuits.zarr --store $(DEMO)/test.zarr --out $(DEMO)/reports/circuit $(DEMO_EVAL)) \
	  > $(DEMO)/handcrafted.log 2>&1 & hc=$$!; \
	  $(FARM) train npe $(NPE_ARGS) --features summary-net $(DEMO_SN_ARCH) --out $(DEMO)/npe-summary-net; sn=$$?; \
	  wait $$hc; hcs=$$?; cat $(DEMO)/handcrafted.log; test $$sn -eq 0 && test $$hcs -eq 0
	@echo "== 5/7 evaluation of the summary network on the held-out store, then all three side by side"
	$(FARM) evaluate --posterior $(DEMO)/npe-summary-net --store $(DEMO)/test.zarr --out $(DEMO)/reports/summary-net $(DEMO_EVAL)
	$(FARM) compare $(DEMO)/reports/handcrafted $(DEMO)/reports/summary-net $(DEMO)/reports/circuit
	@echo "== 6/7 serve the summary-network posterior and query it over HTTP"
	$(FARM) serve --posterior $(DEMO)/npe-summary-net --port $(DEMO_PORT) --detach --pid-file $(DEMO)/serve.pid
	status=0; $(FARM) query --url http://127.0.0.1:$(DEMO_PORT) --store $(DEMO)/test.zarr --index 0 --n 1000 --seed 0 --plot $(DEMO)/query.png || status=$$?; \
	  pid=$$(cat $(DEMO)/serve.pid); kill -INT $$pid; for i in $$(seq 60); do kill -0 $$pid 2>/dev/null || break; sleep 1; done; \
	  kill -0 $$pid 2>/dev/null && kill -TERM $$pid; echo "server (pid $$pid) stopped"; exit $$status
	@echo "== 7/7 done. Reports (metrics.json + figures; docs/evaluation.md explains them):"
	@echo "   $(abspath $(DEMO))/reports/handcrafted"
	@echo "   $(abspath $(DEMO))/reports/summary-net"
	@echo "   $(abspath $(DEMO))/reports/circuit   (circuit-aware: conditioned on $(abspath $(DEMO))/circuits.zarr)"
	@echo "   query pair plot: $(abspath $(DEMO))/query.png"

bench: $(STAMP)
	$(BIN)/python bench/kernel.py
	$(BIN)/python bench/simulate.py

clean:
	rm -rf $(VENV) demo-out .pytest_cache
