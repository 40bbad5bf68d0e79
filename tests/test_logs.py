"""The engine's log: levels, timestamps, a line per route and port change, the journal's
priority prefixes, a SIGHUP that changes the level; the pool check at every level."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from test_control import ROOT, stop_engine, traffic, wait_ready
from test_reload import hangup_and_wait

from engine.cli.client import request

from conftest import Lab

STAMP = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}"


def start(lab: Lab, path: Path, *args: str, stderr=subprocess.PIPE,
          env: dict[str, str] | None = None) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "engine.cli", "run", str(lab.config_path), "--keep-running",
         "--socket", str(path), *args],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=stderr, text=True, env=env)


@pytest.fixture
def lab(tmp_path: Path):
    lab = Lab(tmp_path, workers=1, batch=16)
    frames = traffic()
    lab.write_input("p0", frames)
    sockdir = Path(tempfile.mkdtemp(prefix="fwd-log-", dir="/tmp"))
    yield lab, sockdir / "fwd.sock", len(frames)
    shutil.rmtree(sockdir, ignore_errors=True)


def ok(path: Path, msg: dict) -> dict:
    reply = request(path, msg)
    assert reply["ok"], reply
    return reply


def test_a_line_per_change_with_time_and_level(lab):
    lab, path, frames = lab
    proc = start(lab, path)
    try:
        wait_ready(proc, path, frames)
        ok(path, {"cmd": "route.add", "prefix": "10.55.0.0/16", "via": "10.0.2.254"})
        ok(path, {"cmd": "route.replace", "prefix": "10.55.0.0/16", "via": "10.0.2.254"})
        ok(path, {"cmd": "route.replace", "prefix": "10.55.0.0/16", "type": "blackhole"})
        ok(path, {"cmd": "route.del", "prefix": "10.55.0.0/16"})
        ok(path, {"cmd": "port.down", "name": "p1"})
        ok(path, {"cmd": "port.up", "name": "p1"})
        ok(path, {"cmd": "port.set", "name": "p1", "mtu": 1200})
    finally:
        out, err = stop_engine(proc)
    assert proc.returncode == 0, err
    lines = err.splitlines()
    # a kept engine is a daemon: every line starts with the time and the level
    assert lines and all(re.match(STAMP + r" (info|notice|warning|error) fwd: ", x)
                         for x in lines), err
    said = [x.split(" ", 2)[2] for x in lines]
    changes = [x for x in said if x.startswith(("fwd: route", "fwd: port"))]
    assert changes == [
        "fwd: route add 10.55.0.0/16 via 10.0.2.254 dev p1: added",
        # the same route again changes nothing, and says nothing
        "fwd: route replace blackhole 10.55.0.0/16: changed",
        "fwd: route del: 1 route (blackhole 10.55.0.0/16)",
        "fwd: port p1 down",
        "fwd: port p1 up",
        "fwd: port p1 mtu 1500 -> 1200",
    ], err
    assert any(re.match(STAMP + r" notice fwd: pool: \d+ of \d+ buffers free$", x)
               for x in lines), err


def test_warning_level_keeps_only_what_went_wrong_and_the_pool_check(lab):
    lab, path, frames = lab
    proc = start(lab, path, "--log-level", "warning", "--no-log-time")
    try:
        wait_ready(proc, path, frames)
        ok(path, {"cmd": "route.add", "prefix": "10.55.0.0/16", "via": "10.0.2.254"})
    finally:
        out, err = stop_engine(proc)
    assert proc.returncode == 0, err
    assert "fwd: control socket" not in err and "route add" not in err, err
    assert re.fullmatch(r"fwd: pool: \d+ of \d+ buffers free\n", err), err
    assert "accounting:" in out  # the counters are the run's result, not log lines


def test_the_config_sets_the_level_and_a_sighup_changes_it(lab):
    lab, path, frames = lab
    text = lab.config_path.read_text()
    lab.config_path.write_text(text.replace("[engine]\n", '[engine]\nlog_level = "warning"\n'))
    proc = start(lab, path)
    try:
        wait_ready(proc, path, frames)
        ok(path, {"cmd": "route.add", "prefix": "10.55.0.0/16", "via": "10.0.2.254"})
        # the level and a route changed in the file: the route shows when the reload ran
        lab.config_path.write_text(text.replace("[engine]\n", '[engine]\nlog_level = "info"\n')
                                   .replace('prefix = "10.9.0.0/16"', 'prefix = "10.44.0.0/16"'))
        hangup_and_wait(proc, path, lambda r: "10.44.0.0/16" in r)
        ok(path, {"cmd": "route.add", "prefix": "10.56.0.0/16", "via": "10.0.2.254"})
    finally:
        out, err = stop_engine(proc)
    assert proc.returncode == 0, err
    assert "route add 10.55.0.0/16" not in err, err  # said at warning: not written
    assert "notice fwd: reload: log level info" in err, err
    assert "info fwd: route add 10.56.0.0/16 via 10.0.2.254 dev p1: added" in err, err


def test_under_the_journal_lines_carry_priorities_not_times(lab, tmp_path: Path):
    lab, path, frames = lab
    log = tmp_path / "stderr"
    with log.open("w") as f:
        st = os.fstat(f.fileno())
        env = {**os.environ, "JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}
        proc = start(lab, path, stderr=f, env=env)
        try:
            wait_ready(proc, path, frames)
            ok(path, {"cmd": "port.down", "name": "p1"})
        finally:
            stop_engine(proc)
    err = log.read_text()
    assert proc.returncode == 0, err
    assert "<6>fwd: port p1 down\n" in err, err
    assert re.search(r"^<5>fwd: pool: ", err, re.M), err
    assert not re.search(STAMP, err), err


def test_check_names_a_bad_log_level(tmp_path: Path):
    lab = Lab(tmp_path)
    lab.config_path.write_text(lab.config_path.read_text().replace(
        "[engine]\n", '[engine]\nlog_level = "loud"\n'))
    r = subprocess.run([sys.executable, "-m", "engine.cli", "check", str(lab.config_path)],
                       cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 2 and "engine.log_level" in r.stderr and "'loud'" in r.stderr, r


@pytest.mark.skipif(shutil.which("systemd-analyze") is None,
                    reason="needs systemd-analyze (Debian: systemd)")
def test_the_service_unit_verifies(tmp_path: Path):
    """contrib/fwd@.service as systemd reads it (an instance, fwd pointed at this
    checkout's); it reloads with SIGHUP and does not restart on exit 2 (bad input)."""
    unit = (ROOT / "contrib" / "fwd@.service").read_text()
    fwd = Path(sys.executable).parent / "fwd"
    (tmp_path / "fwd@lab.service").write_text(unit.replace("/usr/local/bin/fwd", str(fwd)))
    r = subprocess.run(["systemd-analyze", "verify", str(tmp_path / "fwd@lab.service")],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "ExecReload=/bin/kill -HUP $MAINPID" in unit
    assert "RestartPreventExitStatus=2" in unit and "KillSignal=SIGTERM" in unit
