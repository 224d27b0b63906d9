# Benchmarks. `make bench` runs them all (a few minutes on 2 cores) and writes
# bench/results/<time>/: bench.json, the PNG plots and each benchmark's log.
#   make bench BENCH_ARGS=--quick                 tiny sizes, about a minute (a smoke test)
#   make bench BENCH_ARGS="--only invoke"         some of them (invoke,hops,cpu,runtime_ceiling,async_invoke,...)
#   make plots JSON=bench/results/<time>/bench.json   re-plot a run (any benchmark JSON works)

PYTHON := .venv/bin/python
BENCH_ARGS ?=
JSON ?=

.PHONY: bench bench-deps plots

bench: bench-deps
	$(PYTHON) bench/run_all.py $(BENCH_ARGS)

# bin/setup makes .venv (and the boto3 the Python sandboxes get); then the `bench` extra
# (matplotlib, the uvicorn baseline) if it is missing, under the lock bin/setup itself takes.
bench-deps:
	@./bin/setup
	@$(PYTHON) -c "import matplotlib, uvicorn, httptools, uvloop, boto3" 2>/dev/null || { \
	    echo "make: installing the bench extra into .venv (pip install -e .[bench])"; \
	    $$(command -v flock >/dev/null && echo flock bin/setup) $(PYTHON) -m pip install -q -e ".[bench]"; }

plots: bench-deps
	@test -n "$(JSON)" || { echo "usage: make plots JSON=bench/results/<time>/bench.json"; exit 2; }
	$(PYTHON) bench/plots.py $(JSON)
