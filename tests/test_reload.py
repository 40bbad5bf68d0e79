"""SIGHUP re-reads the config: its [[route]]s replace the running config routes, as a
daemon reloads; a bad config, or one whose ports changed, changes nothing. The engine
keeps forwarding and stops cleanly afterwards (counters, pool check, exit 0)."""

from __future__ import annotations

import shutil
import signal
import tempfile
import time
from pathlib import Path

import pytest
from test_control import start_engine, stop_engine, traffic, wait_ready

from engine.cli.client import request

from conftest import Lab


def routes(path: Path) -> dict[str, dict]:
    reply = request(path, {"cmd": "route.show"})
    assert reply["ok"], reply
    return {r["prefix"]: r for r in reply["routes"]}


def hangup_and_wait(proc, path: Path, want) -> dict[str, dict]:
    proc.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        now = routes(path)
        if want(now):
            return now
        time.sleep(0.05)
    pytest.fail(f"the reload did not show: {sorted(routes(path))}")


@pytest.fixture
def engine(tmp_path: Path):
    lab = Lab(tmp_path, workers=1, batch=16)
    frames = traffic()
    lab.write_input("p0", frames)
    sockdir = Path(tempfile.mkdtemp(prefix="fwd-hup-", dir="/tmp"))
    path = sockdir / "fwd.sock"
    proc = start_engine(lab, path)
    try:
        wait_ready(proc, path, len(frames))
        yield proc, path, lab
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
        shutil.rmtree(sockdir, ignore_errors=True)


def test_sighup_reloads_the_config_routes(engine):
    proc, path, lab = engine
    before = routes(path)
    assert "10.9.8.0/24" in before and "10.9.0.0/16" in before
    assert request(path, {"cmd": "route.add", "prefix": "10.55.0.0/16",
                          "via": "10.0.2.254"})["ok"]  # the operator's: stays
    text = lab.config_path.read_text()
    text = text.replace('prefix = "10.9.8.0/24"\nvia = "10.0.1.2"',
                        'prefix = "10.9.8.0/24"\nvia = "10.0.2.254"')  # changed
    text = text.replace('prefix = "10.9.0.0/16"', 'prefix = "10.44.0.0/16"')  # gone, new
    lab.config_path.write_text(text)
    after = hangup_and_wait(proc, path, lambda r: "10.44.0.0/16" in r)
    assert "10.9.0.0/16" not in after
    assert after["10.9.8.0/24"]["via"] == "10.0.2.254"
    assert after["10.44.0.0/16"]["via"] == "10.0.2.254"
    assert "10.55.0.0/16" in after  # added at run time: not the config's to remove
    assert request(path, {"cmd": "route.lookup", "addr": "10.44.1.1"})["route"][
        "prefix"] == "10.44.0.0/16"
    out, err = stop_engine(proc)
    assert proc.returncode == 0, err
    assert (f"fwd: reload: {lab.config_path}: routes 1 added, 1 changed, 1 removed"
            in err), err
    assert "fwd: pool:" in err and "accounting:" in out


def test_a_bad_config_or_new_ports_change_nothing(engine):
    proc, path, lab = engine
    before = routes(path)
    good = lab.config_path.read_text()
    lab.config_path.write_text(good.replace('prefix = "10.9.0.0/16"', 'prefix = "10.9.0.0/33"'))
    proc.send_signal(signal.SIGHUP)
    time.sleep(1.0)
    assert routes(path) == before and proc.poll() is None
    lab.config_path.write_text(good.replace("mtu = 1500", "mtu = 1400", 1)
                               .replace('prefix = "10.9.0.0/16"', 'prefix = "10.44.0.0/16"'))
    proc.send_signal(signal.SIGHUP)
    time.sleep(1.0)
    assert routes(path) == before and proc.poll() is None
    out, err = stop_engine(proc)
    assert proc.returncode == 0, err
    assert "fwd: reload: " in err and "route[0].prefix" in err and "nothing changed" in err
    assert ("[[port]] or [[neighbor]] changed; restart the engine to apply them; "
            "nothing changed") in err
