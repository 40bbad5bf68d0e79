"""A running engine's processes carry names `ps -e`, top and pgrep show."""

from __future__ import annotations

from pathlib import Path

from test_control import engine  # noqa: F401  (the module's running engine)

from engine.cli.client import request


def comm(pid: int) -> str:
    return Path(f"/proc/{pid}/comm").read_text().strip()


def test_every_process_is_named(engine):  # noqa: F811
    workers = request(engine.path, {"cmd": "stats"})["stats"]["workers"]
    names = {r["agent"]: comm(r["pid"]) for r in workers if r.get("pid")}
    assert names["worker0"] == "fwd-worker-0" and names["worker1"] == "fwd-worker-1"
    assert names["slowpath"] == "fwd-slowpath"
    assert comm(engine.proc.pid) == "fwd"
