"""perf/bench_lab.py end to end, in its --quick form: the lab is built, every mode
(the engine with 1 and 2 workers, the kernel router with and without RPS) carries
64-byte and 1,500-byte UDP and an iperf3 TCP stream from h1 to h2, and the JSON
records all of it. No speed is asserted, only that every mode forwarded.

Needs root, iproute2, trafgen (netsniff-ng), iperf3 and taskset; skipped, naming
what is missing, otherwise.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "perf" / "bench_lab.py"


def _load_bench():
    spec = importlib.util.spec_from_file_location("bench_lab", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


bench = _load_bench()
pytestmark = pytest.mark.skipif(bench.missing() is not None, reason=bench.missing() or "")


def test_quick_run_covers_every_mode(tmp_path):
    prefix = f"blt{os.getpid() % 100000}"
    out = tmp_path / "lab.json"
    proc = subprocess.run([sys.executable, str(BENCH), "--quick", "--prefix", prefix,
                           "--json", str(out)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # the lab is gone again
    left = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert f"{prefix}-" not in left

    result = json.loads(out.read_text())
    assert set(result["summary"]) == set(bench.MODES)
    for mode in bench.MODES:
        s = result["summary"][mode]
        assert set(s) == set(bench.TESTS), mode
        for test in ("udp64", "udp1500"):
            assert s[test]["sent_pps"]["median"] > 0, (mode, test, s)
            assert s[test]["rx_pps"]["median"] > 0, (mode, test, s)
            assert s[test]["rx_gbps"]["median"] > 0, (mode, test, s)
        if mode == "engine-2w" and "gbps" not in s["tcp"]:
            # iperf3's own sessions may stall with the engine's two workers (see
            # bench_lab.tcp_test): then every attempt must be recorded as stalled
            assert s["tcp"]["failed"] == 1 and s["tcp"]["stalled_sessions"] == 2, s
        else:
            assert s["tcp"]["gbps"]["median"] > 0, (mode, s)

    rows = result["runs"]
    assert sorted((row["mode"], row["test"]) for row in rows) == sorted(
        (m, t) for m in bench.MODES for t in bench.TESTS)
    for row in rows:
        if row["mode"].startswith("engine"):
            # the engine itself saw the traffic, and its books balanced at the end
            assert row["engine_balanced"] is True
            assert row["engine"]["ports"]["p0"]["rx_packets"] > 0, row
            assert row["engine"]["ports"]["p1"]["tx_packets"] > 0, row
            workers = row["engine"]["workers"]
            assert len(workers) == int(row["mode"][-2]), row
    for test in bench.TESTS:
        ratio = result["ratios"][test]
        assert ratio["engine-1w/kernel-rps"] > 0 and ratio["engine-1w/kernel-best"] > 0, ratio
    targets = {"udp64 engine >= kernel best (ratio >= 1.0)": 1.0,
               "tcp engine >= half the kernel's (ratio >= 0.5)": 0.5}
    goals = result["ratios"]["goals"]
    assert set(goals) == set(targets)
    for name, goal in goals.items():
        assert goal["mode"].startswith("engine"), goal
        assert goal["met"] == (goal["ratio"] >= targets[name]), goal
    # the printed table has a row for every mode
    rows_printed = {line.split()[0] for line in proc.stdout.splitlines() if line.strip()}
    assert set(bench.MODES) <= rows_printed, proc.stdout


def test_engine_modes_take_batch_and_options():
    m = bench.ENGINE_MODE.match("engine-1w-b2048+tx_frames=4096+together")
    assert (m["workers"], m["batch"], m["opts"]) == ("1", "2048", "+tx_frames=4096+together")
    assert bench.ENGINE_MODE.match("engine-2w")["opts"] == ""
    assert bench.ENGINE_MODE.match("engine-1w+") is None
