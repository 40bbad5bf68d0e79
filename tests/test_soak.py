"""The soak's short mode (perf/soak.py): a mixed capture replayed by `fwd run` with 1
and 2 workers: exit 0, no traceback, balanced, the pool whole, the same output bytes.
The long mode (hundreds of seeds) is run by hand: `perf/soak.py --runs 300`."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "perf"))

import soak  # noqa: E402


def test_a_mixed_replay_with_1_and_2_workers(tmp_path: Path):
    result = soak.soak(runs=1, frames=3000, seed=7, timeout=240, keep=tmp_path / "failed")
    assert result["failed"] == 0, result["failures"]


def test_the_soak_catches_a_difference_between_worker_counts(tmp_path: Path, monkeypatch):
    """The check can fail: a 2-worker output one byte short is reported (replays
    stood in for: the comparison is what is tested)."""
    def fake(folder: Path, workers: int, batch: int, timeout: float) -> soak.Outcome:
        data = (folder / "in" / "p1.pcap").read_bytes()
        (folder / f"p1-{workers}w.pcap").write_bytes(data if workers == 1 else data[:-1])
        return soak.Outcome(workers, batch, 0, 0.0)

    monkeypatch.setattr(soak, "replay", fake)
    r = soak.soak_one(7, 600, tmp_path, timeout=240)
    assert not r["ok"] and r["problems"] == ["p1: the outputs of 1 and 2 workers differ"], r
