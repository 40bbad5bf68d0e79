"""`fwd route` in iproute2's words against a running engine: add, replace, del, flush,
show, load (idempotent), save; and the config's `include` that reads a saved fragment
back (a save → include → restart round trip, with ECMP traffic over both members).

One `fwd run --keep-running` on the 3-port Lab (module fixture); each test puts back
what it changes.
"""

from __future__ import annotations

import shutil
import signal
import tempfile
import time
from pathlib import Path

import pytest
from scapy.utils import rdpcap
from test_control import fwd, start_engine, stop_engine, udp, wait_ready

from engine.cli.client import request
from engine.control.routespec import RouteWordsError, parse_route_words

from conftest import Lab


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    lab = Lab(tmp_path_factory.mktemp("routecli"), workers=1, batch=16)
    sockdir = Path(tempfile.mkdtemp(prefix="fwd-rt-", dir="/tmp"))
    path = sockdir / "fwd.sock"
    proc = start_engine(lab, path)
    try:
        wait_ready(proc, path, 0)
        yield lab, path, proc
    finally:
        if proc.poll() is None:
            stop_engine(proc)
        shutil.rmtree(sockdir, ignore_errors=True)


def routes(path: Path) -> dict[str, dict]:
    reply = request(path, {"cmd": "route.show"})
    assert reply["ok"], reply
    return {r["prefix"]: r for r in reply["routes"]}


def cli(path: Path, *args: str):
    return fwd(*args, "--socket", str(path))


def restore(engine, before: dict[str, dict]) -> None:
    """The config's routes back as they were: the cli ones flushed, then a reload
    (SIGHUP) re-adds the config's."""
    lab, path, proc = engine
    assert cli(path, "route", "flush", "origin", "cli").returncode == 0
    proc.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 30
    while routes(path) != before:
        assert time.monotonic() < deadline, routes(path)
        time.sleep(0.05)


# ------------------------------------------------------------------ the words


@pytest.mark.parametrize("words, table", [
    ("10.9.0.0/16 via 10.0.2.254 dev p1",
     {"prefix": "10.9.0.0/16", "via": "10.0.2.254", "port": "p1"}),
    ("blackhole 10.7.0.0/16", {"prefix": "10.7.0.0/16", "type": "blackhole"}),
    ("10.8.0.0/16 metric 20 nexthop via 10.0.2.254 dev p1 nexthop via 10.0.3.2",
     {"prefix": "10.8.0.0/16", "metric": 20,
      "nexthops": [{"via": "10.0.2.254", "port": "p1"}, {"via": "10.0.3.2"}]}),
    ("10.8.0.0/16 nexthop via 10.0.2.254", {"prefix": "10.8.0.0/16", "via": "10.0.2.254"}),
    ("default via 10.0.2.254", {"prefix": "0.0.0.0/0", "via": "10.0.2.254"}),
    ("10.60.0.0/16 port p2 type unicast",  # the older words
     {"prefix": "10.60.0.0/16", "port": "p2", "type": "unicast"}),
])
def test_route_words(words, table):
    assert parse_route_words(words.split()) == table


@pytest.mark.parametrize("words, error", [
    ("", "a prefix is needed"),
    ("blackhole", "a prefix is needed after 'blackhole'"),
    ("10.8.0.0/16 via 10.0.2.254 nexthop via 10.0.3.2", "not both"),
    ("10.8.0.0/16 nexthop dev p1", "nexthop 1 has no via"),
    ("10.8.0.0/16 nexthop via 10.0.2.254 via 10.0.3.2", "'via' is given twice in one nexthop"),
    ("10.8.0.0/16 metric x", "metric 'x' is not a number"),
    ("10.8.0.0/16 gateway 10.0.2.254", "unknown word 'gateway'"),
    ("10.8.0.0/16 via", "'via' needs a value"),
])
def test_route_words_refused(words, error):
    with pytest.raises(RouteWordsError, match=error):
        parse_route_words(words.split())


# ------------------------------------------------------------------ add, replace, del


def test_add_in_iproute2_words_and_file_exists(engine):
    lab, path, _ = engine
    before = routes(path)
    r = cli(path, "route", "add", "10.40.0.0/16", "via", "10.0.2.254", "dev", "p1")
    assert r.returncode == 0 and r.stdout == "added 10.40.0.0/16 via 10.0.2.254 dev p1\n"
    r = cli(path, "route", "add", "blackhole", "10.41.0.0/16")
    assert r.returncode == 0 and r.stdout == "added blackhole 10.41.0.0/16\n", r.stderr
    # --via twice is ECMP, never the last gateway alone
    r = cli(path, "route", "add", "10.42.0.0/16", "--via", "10.0.2.254", "--via", "10.0.3.2")
    assert r.returncode == 0, r.stderr
    assert [h["via"] for h in routes(path)["10.42.0.0/16"]["nexthops"]] == [
        "10.0.2.254", "10.0.3.2"]
    # a prefix that has a route: iproute2's EEXIST, one line, exit 2; metric or not
    r = cli(path, "route", "add", "10.9.0.0/16", "via", "10.0.3.2")
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr == ("fwd: route add: 10.9.0.0/16: File exists (a route from the config); "
                        "`fwd route replace` changes it\n")
    r = cli(path, "route", "add", "10.40.0.0/16", "via", "10.0.3.2", "metric", "5")
    assert r.returncode == 2 and "File exists" in r.stderr
    assert "its metric is 0, and the FIB holds one route per prefix" in r.stderr
    for bad, words in ((["10.43.0.0/16", "via"], "'via' needs a value"),
                       (["10.43.0.0/16", "via", "10.7.0.1"], "not on any port's subnet"),
                       (["10.43.0.0/16", "nexthop", "via", "10.0.2.254", "dev", "p2"],
                        "not on port p2's subnet")):
        r = cli(path, "route", "add", *bad)
        assert r.returncode == 2 and words in r.stderr and len(r.stderr.splitlines()) == 1, r
    # del of several prefixes: one request, all or none
    r = cli(path, "route", "del", "10.40.0.0/16", "10.41.0.0/16", "10.44.0.0/16")
    assert r.returncode == 2 and r.stderr == (
        "fwd: route del: no route 10.44.0.0/16; nothing was deleted\n")
    # one route in add's words: deleted only if it is so (ip route del matches)
    r = cli(path, "route", "del", "10.40.0.0/16", "via", "10.0.3.2")
    assert r.returncode == 2 and r.stderr == (
        "fwd: route del: no route 10.40.0.0/16 with that via (No such process): "
        "`fwd route show` lists the one there\n")
    r = cli(path, "route", "del", "unreachable", "10.41.0.0/16")
    assert r.returncode == 2 and "with that type" in r.stderr
    r = cli(path, "route", "del", "blackhole", "10.41.0.0/16")
    assert r.returncode == 0 and r.stdout == "deleted blackhole 10.41.0.0/16\n", r.stderr
    r = cli(path, "route", "del", "10.42.0.0/16", "via", "10.0.3.2", "dev", "p2")
    assert r.returncode == 0, r.stderr  # an ECMP member's gateway and port match
    r = cli(path, "route", "del", "10.40.0.0/16", "10.41.0.0/16", "10.42.0.0/16")
    assert r.returncode == 2 and "no route 10.41.0.0/16; nothing was deleted" in r.stderr
    assert cli(path, "route", "add", "blackhole", "10.41.0.0/16").returncode == 0
    r = cli(path, "route", "del", "10.40.0.0/16", "10.41.0.0/16")
    assert r.returncode == 0 and r.stdout.count("deleted ") == 2, r.stderr
    assert routes(path) == before


def test_replace_adds_changes_or_leaves(engine):
    lab, path, _ = engine
    before = routes(path)
    r = cli(path, "route", "replace", "10.9.0.0/16", "via", "10.0.3.2")
    assert r.returncode == 0 and r.stdout == "changed 10.9.0.0/16 via 10.0.3.2 dev p2\n"
    now = routes(path)["10.9.0.0/16"]
    assert now["origin"] == "cli" and now["port"] == "p2"
    hop = request(path, {"cmd": "route.lookup", "addr": "10.9.1.1"})["nexthop"]
    assert hop["port"] == "p2" and hop["gateway"] == "10.0.3.2"
    r = cli(path, "route", "replace", "10.9.0.0/16", "via", "10.0.3.2")
    assert r.returncode == 0 and r.stdout.startswith("unchanged ")
    r = cli(path, "route", "replace", "10.45.0.0/16", "dev", "p2", "metric", "7")
    assert r.returncode == 0 and r.stdout == "added 10.45.0.0/16 dev p2 metric 7\n"
    r = cli(path, "route", "replace", "10.0.1.0/24", "dev", "p1")  # a connected subnet
    assert r.returncode == 2 and "connected subnet of port p0" in r.stderr
    restore(engine, before)


def test_show_has_a_header_and_every_ecmp_member(engine):
    lab, path, _ = engine
    r = cli(path, "route", "show")
    lines = r.stdout.splitlines()
    assert lines[0].split() == ["prefix", "type", "nexthop", "metric", "origin"]
    ecmp = lines.index(next(x for x in lines if x.startswith("10.77.0.0/16")))
    assert lines[ecmp].split() == ["10.77.0.0/16", "unicast", "nexthop", "via", "10.0.2.254",
                                   "dev", "p1", "0", "config"]
    assert lines[ecmp + 1].split() == ["nexthop", "via", "10.0.3.2", "dev", "p2"]
    assert any(x.split() == ["10.0.1.0/24", "unicast", "dev", "p0", "0", "connected"]
               for x in lines)
    assert any(x.split() == ["10.66.0.0/16", "blackhole", "0", "config"] for x in lines)


# ------------------------------------------------------------------ flush


def test_flush_needs_a_selector_and_keeps_connected_routes(engine):
    lab, path, _ = engine
    before = routes(path)
    r = cli(path, "route", "flush")
    assert r.returncode == 2 and "a selector is needed" in r.stderr
    r = cli(path, "route", "flush", "origin", "connected")
    assert r.returncode == 2 and "never flushed" in r.stderr
    for p in ("10.46.0.0/16", "10.46.1.0/24", "10.47.0.0/16"):
        assert cli(path, "route", "add", p, "dev", "p2").returncode == 0
    r = cli(path, "route", "flush", "10.46.0.0/16")
    assert r.returncode == 0 and r.stdout == "flushed 2 routes\n"
    assert "10.47.0.0/16" in routes(path) and "10.46.1.0/24" not in routes(path)
    r = cli(path, "route", "flush", "proto", "cli")
    assert r.returncode == 0 and r.stdout == "flushed 1 route\n"
    assert routes(path) == before
    # everything inside 10.0.0.0/8 from the config, and still the connected subnets
    r = cli(path, "route", "flush", "10.0.0.0/8", "origin", "config")
    assert r.returncode == 0
    left = routes(path)
    assert {o["origin"] for o in left.values()} == {"connected"}
    assert set(left) == {"10.0.1.0/24", "10.0.2.0/24", "10.0.3.0/24"}
    assert request(path, {"cmd": "route.lookup", "addr": "10.0.2.2"})["nexthop"]["port"] == "p1"
    restore(engine, before)


# ------------------------------------------------------------------ load


def test_load_is_idempotent_and_counts(engine):
    lab, path, _ = engine
    before = routes(path)
    f = lab.root / "table.txt"
    f.write_text("# a table in fwd route add's words\n"
                 "10.50.0.0/16 via 10.0.2.254 dev p1\n"
                 "blackhole 10.51.0.0/16\n"
                 "10.52.0.0/16 metric 3 nexthop via 10.0.2.254 nexthop via 10.0.3.2\n"
                 "10.53.0.0/16 port p2   # the older words\n")
    r = cli(path, "route", "load", str(f))
    assert r.stdout == f"loaded 4 routes from {f}: 4 added, 0 changed, 0 unchanged\n", r
    r = cli(path, "route", "load", str(f))
    assert r.stdout == f"loaded 4 routes from {f}: 0 added, 0 changed, 4 unchanged\n", r
    f.write_text("10.50.0.0/16 via 10.0.3.2\nblackhole 10.51.0.0/16\n")
    r = cli(path, "route", "load", str(f))
    assert r.stdout == f"loaded 2 routes from {f}: 0 added, 1 changed, 1 unchanged\n", r
    assert routes(path)["10.52.0.0/16"]["metric"] == 3  # not in the file: it stays
    r = cli(path, "route", "flush", "origin", "cli")
    assert r.stdout == "flushed 4 routes\n"
    assert routes(path) == before


# ------------------------------------------------------------------ save, include, restart


def test_save_include_restart_round_trip_with_ecmp_traffic(engine, tmp_path):
    """Routes added with the CLI, saved, included by a config, come back the same after
    a restart; the ECMP one spreads flows over both of its gateways."""
    lab, path, _ = engine
    added = [("10.8.0.0/16", "nexthop", "via", "10.0.2.254", "dev", "p1", "nexthop", "via",
              "10.0.3.2", "dev", "p2"),
             ("unreachable", "10.54.0.0/16", "metric", "9"),
             ("10.55.0.0/16", "dev", "p2"),
             ("10.56.0.0/16", "via", "10.0.2.254")]
    for words in added:
        assert cli(path, "route", "add", *words).returncode == 0
    saved = {p: r for p, r in routes(path).items() if r["origin"] == "cli"}
    assert len(saved) == 4
    out = lab.root / "routes.toml"
    r = cli(path, "route", "save", str(out))
    assert r.returncode == 0 and r.stdout == f"saved 4 routes to {out}\n", r.stderr
    assert cli(path, "route", "save").stdout == out.read_text()  # standard output
    assert cli(path, "route", "flush", "origin", "cli").stdout == "flushed 4 routes\n"

    # a second deployment: the same topology, including the saved routes, with traffic
    # to 10.8.0.0/16 over many flows
    lab2 = Lab(tmp_path, workers=2, batch=16)
    lab2.config_path.write_text(f'include = ["{out}"]\n' + lab2.config_path.read_text())
    r = fwd("check", str(lab2.config_path))
    assert r.returncode == 0 and "12 routes" in r.stdout, r.stderr
    frames = [udp(f"10.8.{i}.{i}", i) for i in range(64)]
    lab2.write_input("p0", frames)
    sock = tmp_path / "fwd.sock"
    proc = start_engine(lab2, sock)
    try:
        wait_ready(proc, sock, len(frames))
        back = {p: r for p, r in routes(sock).items() if r["prefix"] in saved}
        for r in back.values():
            assert r.pop("origin") == "config"
        assert back == {p: {k: v for k, v in r.items() if k != "origin"}
                        for p, r in saved.items()}
    finally:
        stop_engine(proc)
    p1 = rdpcap(str(tmp_path / "out" / "p1.pcap"))
    p2 = rdpcap(str(tmp_path / "out" / "p2.pcap"))
    assert len(p1) + len(p2) == 64 and len(p1) > 8 and len(p2) > 8


def test_include_errors_name_the_file_and_the_key(tmp_path):
    lab = Lab(tmp_path)
    frag = tmp_path / "routes.toml"
    lab.config_path.write_text('include = ["routes.toml"]\n' + lab.config_path.read_text())
    for text, error in (
            ('[[route]]\nprefix = "10.60.0.0/16"\nvia = "10.7.0.1"\n',
             "include[0] (routes.toml): route[0].via: gateway 10.7.0.1 is not on any port's "
             "subnet"),
            ('[[route]]\nprefix = "10.9.0.0/16"\nport = "p1"\n',
             "include[0] (routes.toml): route[0].prefix: 10.9.0.0/16 is already the prefix "
             "of the config's route[0]"),
            ('[[route]]\nprefix = "10.60.0.0/16"\nport = "p1"\nmetric = -1\n',
             "include[0] (routes.toml): route[0].metric: -1 is out of range"),
            ("[engine]\nworkers = 2\n",
             "include[0] (routes.toml): engine: an included file holds [[route]]s only")):
        frag.write_text(text)
        r = fwd("check", str(lab.config_path))
        assert r.returncode == 2 and r.stderr.startswith(f"{lab.config_path}: {error}"), r.stderr
        assert len(r.stderr.splitlines()) == 1
    frag.unlink()
    r = fwd("check", str(lab.config_path))
    assert r.returncode == 2 and "include[0] (routes.toml): no such file" in r.stderr
