"""Config loading: fixture files (vppcfg style) and the parsed values.

`tests/configs/correct-*.toml` must load; each `tests/configs/error-*.toml` must be
refused with a `ConfigError` containing what its first line says (``# expect: ...``).
"""

from __future__ import annotations

import ipaddress
import json
import math
import tomllib
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.config import (
    DRIVERS,
    Config,
    ConfigError,
    EngineConfig,
    IcmpConfig,
    Interface,
    Ipv4Config,
    NextHopConfig,
    ReassemblyConfig,
    format_config_error,
    load_config,
)
from engine.io import registry
from engine.io.registry import check as check_drivers

CONFIGS = Path(__file__).parent / "configs"
REPO = Path(__file__).parent.parent
CORRECT = sorted(CONFIGS.glob("correct-*.toml"))
ERRORS = sorted(CONFIGS.glob("error-*.toml"))


def ip(s: str) -> int:
    return int(ipaddress.IPv4Address(s))


def mac(s: str) -> bytes:
    return bytes.fromhex(s.replace(":", ""))


def expectation(path: Path) -> str:
    first = path.read_text().splitlines()[0]
    assert first.startswith("# expect: "), f"{path.name}: first line must be '# expect: ...'"
    return first.removeprefix("# expect: ")


# --- fixtures -------------------------------------------------------------------------


def fwd_check(path: Path) -> Config:
    """What `fwd check` runs: the schema, then what only the port drivers can tell."""
    return check_drivers(load_config(path))


def test_every_config_driver_is_registered() -> None:
    assert set(DRIVERS) == set(registry.DRIVERS)


def test_fixture_sets_are_not_empty() -> None:
    assert len(CORRECT) >= 5
    assert len(ERRORS) >= 30


@pytest.mark.parametrize("path", CORRECT, ids=lambda p: p.stem)
def test_correct_config_loads(path: Path) -> None:
    cfg = load_config(path)
    assert isinstance(cfg, Config)
    assert cfg.ports


@pytest.mark.parametrize("path", ERRORS, ids=lambda p: p.stem)
def test_error_config_is_refused(path: Path) -> None:
    expected = expectation(path)
    with pytest.raises(ConfigError) as info:
        fwd_check(path)
    assert expected in str(info.value)


@pytest.mark.parametrize("path", ERRORS, ids=lambda p: p.stem)
def test_error_names_its_key(path: Path) -> None:
    """Every message starts with the key path (or says the TOML itself is broken)."""
    with pytest.raises(ConfigError) as info:
        fwd_check(path)
    err = info.value
    if err.key is None:
        assert str(err).startswith("invalid TOML:")
    else:
        assert str(err).startswith(f"{err.key}: ")


def test_project_configs_load() -> None:
    cfg = load_config(REPO / "configs" / "default.toml")
    assert [p.name for p in cfg.ports] == ["p0", "p1"]


def test_shared_test_topology_loads(lab) -> None:
    cfg = lab.config()
    assert [p.mtu for p in cfg.ports] == [1500, 1500, 1400]
    assert {r.port for r in cfg.routes if r.via is not None} == {"p0", "p1", "p2"}


# --- parsed values --------------------------------------------------------------------


def test_minimal_defaults() -> None:
    cfg = load_config(CONFIGS / "correct-minimal.toml")
    assert cfg.path == (CONFIGS / "correct-minimal.toml").absolute()
    assert cfg.engine == EngineConfig(workers=1, batch=256, control_socket=None)
    assert cfg.engine.datapath == "compiled"
    assert cfg.ipv4 == Ipv4Config(accept_source_route=False)
    assert cfg.reassembly == ReassemblyConfig("full", 30.0, 4 * 1024 * 1024, 3 * 1024 * 1024)
    assert cfg.icmp == IcmpConfig(ratelimit_ms=1000, send_redirects=True)
    assert cfg.routes == () and cfg.neighbors == ()
    (port,) = cfg.ports
    assert port.name == "p0" and port.driver == "pcap"
    assert port.mac == b"\x02\x00\x00\x00\x00\x01"
    assert port.mtu == 1500
    assert port.addresses == (Interface(ip("10.0.1.1"), 24),)
    assert port.addresses[0].address == 0x0A000101
    assert port.rx == CONFIGS / "p0.pcap" and port.rx.is_absolute()
    assert port.tx == CONFIGS / "out" / "p0.pcap"
    assert port.iface is None and port.device is None
    assert cfg.port_index("p0") == 0


def test_datapath_numpy() -> None:
    assert load_config(CONFIGS / "correct-datapath-numpy.toml").engine.datapath == "numpy"


def test_two_ports_routes_values() -> None:
    cfg = load_config(CONFIGS / "correct-two-ports-routes.toml")
    assert cfg.engine == EngineConfig(workers=2, batch=256)
    assert [p.mtu for p in cfg.ports] == [1500, 1400]
    routes = {(ipaddress.IPv4Address(r.prefix), r.prefix_len): r for r in cfg.routes}

    default = routes[(ipaddress.IPv4Address("0.0.0.0"), 0)]
    assert (default.type, default.via, default.port) == ("unicast", ip("10.0.2.254"), "p1")
    r = routes[(ipaddress.IPv4Address("10.9.0.0"), 16)]
    assert r.prefix == 0x0A090000 and r.via == ip("10.0.2.254") and r.port == "p1"
    r = routes[(ipaddress.IPv4Address("10.9.8.0"), 24)]
    assert (r.via, r.port) == (ip("10.0.1.2"), "p0")
    r = routes[(ipaddress.IPv4Address("10.69.0.0"), 16)]
    assert (r.via, r.port, r.nexthops) == (None, "p1", ())
    r = routes[(ipaddress.IPv4Address("192.0.2.1"), 32)]
    assert (r.via, r.port) == (ip("10.0.1.3"), "p0")
    for prefix, rtype in (("10.66.0.0", "blackhole"), ("10.67.0.0", "unreachable"),
                          ("10.68.0.0", "prohibit")):
        r = routes[(ipaddress.IPv4Address(prefix), 16)]
        assert (r.type, r.via, r.port, r.nexthops) == (rtype, None, None, ())

    assert [(n.ip, n.mac, n.port) for n in cfg.neighbors] == [
        (ip("10.0.2.254"), mac("02:00:00:00:02:fe"), "p1"),
        (ip("10.0.1.2"), mac("02:00:00:00:01:02"), "p0"),
    ]
    assert cfg.ipv4.accept_source_route is True
    assert cfg.reassembly == ReassemblyConfig("forward", 0.5, 262144, 196608)
    assert cfg.icmp == IcmpConfig(ratelimit_ms=0, send_redirects=False)


def test_ecmp_next_hops_resolve_their_ports() -> None:
    cfg = load_config(CONFIGS / "correct-ecmp.toml")
    first, second = cfg.routes
    assert first.via is None and first.port is None
    assert first.nexthops == (
        NextHopConfig(ip("10.0.1.254"), "p0"),
        NextHopConfig(ip("10.0.2.254"), "p1"),
        NextHopConfig(ip("10.0.2.253"), "p1"),
    )
    assert second.port == "p1"
    assert [nh.port for nh in second.nexthops] == ["p1", "p1"]


def test_afpacket_values() -> None:
    cfg = load_config(CONFIGS / "correct-afpacket.toml")
    a, b = cfg.ports
    assert (a.driver, a.iface, a.rx, a.tx, a.mtu) == ("afpacket", "veth0", None, None, 9000)
    assert b.mac == bytes([0x02, 0xAA, 0xBB, 0xCC, 0xDD, 0xEE])  # upper case hex accepted
    assert b.mtu == 68
    assert a.addresses[2] == Interface(ip("192.0.2.0"), 31)  # /31: both addresses usable
    assert b.addresses[0] == Interface(ip("198.51.100.7"), 32)
    assert cfg.routes[0].port == "veth0"
    assert cfg.engine == EngineConfig(workers=4, batch=32, netns="fwdlab-r")


def test_dpdk_values() -> None:
    cfg = load_config(CONFIGS / "correct-dpdk.toml")
    assert cfg.engine == EngineConfig(64, 4096, Path("/run/fwd/fwd.sock"))
    assert [p.device for p in cfg.ports] == ["0000:03:00.0",
                                            "net_pcap0,rx_pcap=in.pcap,tx_pcap=out.pcap"]
    assert cfg.ports[1].addresses == ()
    assert cfg.routes[0].port == "dp1"
    assert cfg.reassembly.timeout_s == 30.0 and isinstance(cfg.reassembly.timeout_s, float)


def test_sixteen_ports_is_the_maximum() -> None:
    cfg = load_config(CONFIGS / "correct-sixteen-ports.toml")
    assert len(cfg.ports) == 16
    assert cfg.port_index("d15") == 15


# --- file-level errors and paths ------------------------------------------------------


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such file"):
        load_config(tmp_path / "nope.toml")


def test_directory_is_not_a_config(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="is a directory"):
        load_config(tmp_path)


def test_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_bytes(b'[engine]\nworkers = 1 # \xff\n')
    with pytest.raises(ConfigError, match="invalid TOML"):
        load_config(path)


def test_toml_syntax_error_gives_line_and_column(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text("[engine]\nworkers = = 2\n")
    with pytest.raises(ConfigError, match=r"invalid TOML: .*line 2, column 11"):
        load_config(path)


def test_relative_paths_follow_the_config_not_the_cwd(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    cfg = load_config(CONFIGS / "correct-minimal.toml")
    assert cfg.ports[0].rx == CONFIGS / "p0.pcap"
    sub = tmp_path / "deploy"
    (sub / "in").mkdir(parents=True)
    (sub / "in" / "p0.pcap").write_bytes((CONFIGS / "p0.pcap").read_bytes())
    text = (CONFIGS / "correct-minimal.toml").read_text().replace('"p0.pcap"', '"in/p0.pcap"')
    (sub / "router.toml").write_text(text + '\n[engine]\ncontrol_socket = "run/fwd.sock"\n')
    cfg = load_config("deploy/router.toml")  # relative to the cwd, tmp_path
    assert cfg.ports[0].rx == tmp_path / "deploy" / "in" / "p0.pcap"
    assert cfg.ports[0].tx == tmp_path / "deploy" / "out" / "p0.pcap"
    assert cfg.engine.control_socket == tmp_path / "deploy" / "run" / "fwd.sock"


def test_format_config_error() -> None:
    err = ConfigError("port[1].mac: '02:00:zz:00:00:01' is not a MAC address", "port[1].mac")
    assert format_config_error("configs/x.toml", err) == (
        "configs/x.toml: port[1].mac: '02:00:zz:00:00:01' is not a MAC address")
    assert format_config_error(Path("a.toml"), err).startswith("a.toml: port[1].mac: ")


def test_error_carries_key() -> None:
    with pytest.raises(ConfigError) as info:
        load_config(CONFIGS / "error-mac-invalid.toml")
    assert info.value.key == "port[1].mac"
    assert isinstance(info.value, ValueError)


# --- robustness: any value anywhere is either accepted or a ConfigError ---------------


def _toml(value: Any) -> str:
    """A TOML inline value (enough for what the strategy below produces)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return "{" + ", ".join(f"{json.dumps(k)} = {_toml(v)}" for k, v in value.items()) + "}"


BASE = tomllib.loads((CONFIGS / "correct-two-ports-routes.toml").read_text())
SLOTS = [(section, None, key) for section in ("engine", "ipv4", "reassembly", "icmp")
         for key in BASE[section]]
SLOTS += [(section, 0, key) for section in ("port", "route", "neighbor")
          for key in BASE[section][0]]
SLOTS += [("port", 0, "name"), ("route", 0, "nexthops"), ("route", 3, "via"),
          ("", None, "route"), ("", None, "port"), ("", None, "engine")]

SCALARS = (st.integers(-2**40, 2**40) | st.booleans() | st.floats() | st.text(max_size=40)
           | st.sampled_from(["10.0.1.7", "10.0.2.0/24", "0.0.0.0/0", "10.0.1.1/33",
                              "02:00:00:00:00:09", "01:00:00:00:00:01", "p1", "pcap",
                              "p0.pcap", "blackhole", "/", "", "\x00"]))
VALUES = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=3)
                      | st.dictionaries(st.sampled_from(["via", "port", "x"]), inner,
                                        max_size=2), max_leaves=6)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                  HealthCheck.function_scoped_fixture])
@given(slot=st.sampled_from(SLOTS), value=VALUES)
def test_any_value_is_accepted_or_a_config_error(tmp_path: Path, slot, value) -> None:
    section, index, key = slot
    doc = json.loads(json.dumps(BASE))
    if not section:
        doc[key] = value
    elif index is None:
        doc[section][key] = value
    else:
        doc[section][index][key] = value
    (tmp_path / "p0.pcap").write_bytes((CONFIGS / "p0.pcap").read_bytes())
    (tmp_path / "p1.pcap").write_bytes((CONFIGS / "p1.pcap").read_bytes())
    path = tmp_path / "fuzz.toml"
    path.write_text("\n".join(f"{json.dumps(k)} = {_toml(v)}" for k, v in doc.items()) + "\n")
    try:
        load_config(path)
    except ConfigError as err:
        assert str(err)
