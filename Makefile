# The README's two commands: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test,bench]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/fwd run configs/default.toml

# then the suites that run the engine end to end again on the numpy datapath (the
# compiled one is the default everywhere else): pcap replays, supervision, the
# namespace lab (not its offload test: that is the AF_PACKET driver's, whatever the
# datapath) and DPDK vdevs
E2E := tests/test_run.py tests/test_pcap_stream.py tests/test_supervision.py \
	tests/test_lab.py tests/test_dpdk_engine.py
E2E_SAME := --deselect tests/test_lab.py::test_iperf3_tcp_with_the_hosts_offloads_on
test: $(STAMP)
	$(BIN)/python -m pytest -q
	FWD_TEST_DATAPATH=numpy $(BIN)/python -m pytest -q $(E2E) $(E2E_SAME)

lint: $(STAMP)
	$(BIN)/ruff check engine tests perf tools

bench: $(STAMP)
	$(BIN)/python perf/bench_fastpath.py

clean:
	rm -rf $(VENV) configs/demo/out
