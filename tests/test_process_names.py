"""A running engine's processes carry names `ps -e`, top and pgrep show, and titles
`ps aux` shows."""

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


def cmdline(pid: int) -> str:
    return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()


def test_ps_aux_shows_what_each_process_is(engine):  # noqa: F811
    """Titles over the command line (`ps aux`), not `python -B -c from multiprocessing...`."""
    workers = request(engine.path, {"cmd": "stats"})["stats"]["workers"]
    titles = {r["agent"]: cmdline(r["pid"]) for r in workers if r.get("pid")}
    assert titles["worker0"] == "fwd: worker 0" and titles["worker1"] == "fwd: worker 1"
    assert titles["slowpath"] == "fwd: slow path"
    assert cmdline(engine.proc.pid).startswith("fwd: control ")
