"""`fwd bench --quick`: the performance suite as a smoke test.

One run of the console command (a subprocess, as a user runs it) with every benchmark
in its quick form; the JSON must hold every benchmark, each either measured (its rows
with numbers > 0) or skipped with a reason (no root, no DPDK, ...), never failed;
the table printed; the plots written when matplotlib is installed. Nothing about
speed is asserted.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from engine.cli.bench import NAMES, rows_l3fwd, rows_lab

ROOT = Path(__file__).resolve().parent.parent
FWD = shutil.which("fwd", path=str(Path(sys.executable).parent)) or "fwd"
HAS_MATPLOTLIB = importlib.util.find_spec("matplotlib") is not None


def check_document(doc: dict) -> None:
    assert set(doc["benchmarks"]) == set(NAMES)
    m = doc["machine"]
    assert m["cpu"] and m["cores"] >= 1 and m["kernel"] and m["python"] and m["numpy"]
    for name, b in doc["benchmarks"].items():
        assert b["status"] in ("ok", "skipped"), (name, b["status"], b["reason"])
        if b["status"] == "skipped":
            assert b["reason"], name
            continue
        assert b["rows"], name
        for r in b["rows"]:
            assert r["value"] is not None and math.isfinite(r["value"]) and r["value"] > 0, (
                name, r)
            if r["peer_value"] is not None:
                assert r["peer_value"] > 0 and r["ratio"] > 0, (name, r)
            elif r["peer"] is not None:  # a peer that could not run says why
                assert r["note"].startswith("peer skipped: "), (name, r)


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[subprocess.CompletedProcess,
                                                                  Path]:
    out = tmp_path_factory.mktemp("bench")
    env = {**os.environ, "FWD_PERF_DIR": str(ROOT / "perf")}
    proc = subprocess.run([FWD, "bench", "--quick", "--out", str(out)], capture_output=True,
                          text=True, timeout=600, env=env, cwd=ROOT)
    return proc, out


def test_quick_suite_covers_every_benchmark(quick_run) -> None:
    proc, out = quick_run
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    files = list(out.glob("*-quick.json"))
    assert len(files) == 1, files
    doc = json.loads(files[0].read_text())
    assert doc["quick"] is True
    check_document(doc)
    # the table: its title names the machine, and every benchmark has a line
    assert f"{doc['machine']['cores']} cores" in proc.stdout
    for name in NAMES:
        assert f"│ {name}" in proc.stdout, name
    if doc["benchmarks"]["fastpath"]["status"] == "ok":  # per-stage ns/packet, VPP-style
        stages = {r["stage"] for r in doc["benchmarks"]["fastpath"]["rows"]
                  if r.get("kind") == "stage"}
        assert stages == {"rcv", "route", "forward", "rewrite", "worker"}
    if HAS_MATPLOTLIB:
        assert set(doc["plots"]) == {"batch", "workers", "packet_size", "peers"}, doc["plots"]
        for name in doc["plots"].values():
            png = (out / name).read_bytes()
            assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000, name
    else:
        assert "matplotlib" in doc["plots"]["skipped"]


def test_only_runs_the_named_benchmarks_and_rejects_unknown_ones(tmp_path: Path) -> None:
    proc = subprocess.run([FWD, "bench", "--only", "fastpath,nosuch"], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 2 and "nosuch" in proc.stderr
    proc = subprocess.run([FWD, "bench", "--quick", "--only", "fastpath", "--no-plots",
                           "--out", str(tmp_path)], capture_output=True, text=True,
                          timeout=120, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    doc = json.loads(next(tmp_path.glob("*.json")).read_text())
    assert list(doc["benchmarks"]) == ["fastpath"]
    assert doc["plots"] == {"skipped": "--no-plots"}
    assert not list(tmp_path.glob("*.png"))


def test_peer_rows_carry_the_ratio_the_script_computed() -> None:
    """lab and l3fwd: the ratio is the script's (a median of per-run ratios, or its
    engine/kernel figure), not recomputed from two medians measured seconds apart."""
    lab = {"summary": {
        "engine-1w": {"udp64": {"rx_pps": {"median": 200e3, "min": 190e3, "max": 210e3}}},
        "kernel": {"udp64": {"rx_pps": {"median": 100e3, "min": 90e3, "max": 130e3}}}},
        "ratios": {"udp64": {"engine-1w/kernel": 1.9}}}
    (r,) = rows_lab(lab)
    assert (r["value"], r["peer_value"], r["ratio"]) == pytest.approx((0.2, 0.1, 1.9))
    assert r["spread"] == pytest.approx(0.1) and r["peer_spread"] == pytest.approx(0.4)
    l3 = {"mixes": {"64": [[60, 1]]},
          "summary": {"64": {"engine 1w b256": {"mpps": 1.0, "spread": 0.1},
                             "l3fwd": {"mpps": 10.0, "spread": 0.2},
                             "testpmd": {"mpps": 20.0, "spread": 0.3}}},
          "ratios": [{"mix": "64", "engine": "engine 1w b256", "engine/l3fwd": 0.09,
                      "engine/testpmd": 0.048}]}
    rows = rows_l3fwd(l3)
    assert [(r["peer"], r["peer_value"], r["ratio"]) for r in rows] == [
        ("l3fwd", 10.0, 0.09), ("testpmd io", 20.0, 0.048)]
    assert rows[0]["mean_frame_bytes"] == 64
