"""Deployment config: one TOML file, parsed into typed, validated objects.

Every section and key is described in docs/config.md.  `load_config` either returns a
fully validated `Config` or raises `ConfigError` whose message names the key and the
problem (e.g. ``port[1].mac: '02:00:zz:00:00:01' is not a MAC address``).

Key paths count array entries from 0, in file order: ``port[1]`` is the second
``[[port]]`` table, ``route[3].nexthops[0].via`` the first next hop of the fourth
``[[route]]``.  The config file's path is not part of the message; callers that show
errors to people prefix it with `format_config_error`.

What is checked, beyond types and unknown keys (which get a "did you mean"):

- ports: at most `MAX_PORTS`; unique names (Linux interface-name rules), unique unicast
  MACs, the keys of exactly one driver, pcap input present, outputs that clobber no
  input and no other output, MTU 68..9000, host addresses (not a subnet's network or
  broadcast address, not martian), no address twice, no subnet overlapping another
  port's;
- routes: network prefixes (host bits clear), no duplicates, nothing the local table
  would shadow (a connected subnet, an own address) and nothing never forwarded
  (loopback, multicast, limited broadcast); gateways on a connected subnet (of the
  given port, if any), not our own address nor a subnet's network/broadcast address;
  the egress port of a gateway route is resolved and stored;
- neighbours: on their port's subnet, unique IPs, unicast MACs that are not ours;
- `include = ["routes.toml", ...]` (top level): files of [[route]]s only, relative to
  the config's folder, read after the config's own [[route]]s and checked by the same
  rules (a prefix may appear once across all files); their errors name the entry, the
  file and the key inside it (``include[0] (routes.toml): route[1].via: ...``).

Routes given at run time (the control socket) are checked by the same rules against
a loaded config's ports with `RouteChecker`; `parse_cidr` reads a prefix as the file
does.
"""

from __future__ import annotations

import difflib
import ipaddress
import math
import os
import re
import stat
import tomllib
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.shm.memory import MAX_PORTS

ROUTE_TYPES = ("unicast", "blackhole", "unreachable", "prohibit")
DRIVERS = ("pcap", "afpacket", "dpdk")
REASSEMBLY_MODES = ("full", "forward")
# [engine] datapath: the numba kernel (engine/pipeline/compiled.py) or the numpy stages
DATAPATHS = ("compiled", "numpy")
# [engine] log_level: the least severe engine log line written (Python's logging levels)
LOG_LEVELS = ("debug", "info", "warning", "error")
# the level of a run's result lines (the pool check at a stop): written at every level,
# as syslog's "notice" between info and warning
LOG_NOTICE = 25

MAX_WORKERS = 64
MAX_BATCH = 4096
MIN_MTU = 68  # RFC 791: every IPv4 module must forward a 68-byte datagram unfragmented
MAX_MTU = 9000
MAX_NEXTHOPS = 16
UNIX_PATH_MAX = 107  # sizeof(sockaddr_un.sun_path) - 1 for the terminating NUL


class ConfigError(ValueError):
    """A config problem; the message names the key and the problem.

    `key` is the key path alone (e.g. ``port[1].mac``), or None for file-level errors.
    """

    def __init__(self, message: str, key: str | None = None) -> None:
        super().__init__(message)
        self.key = key


@dataclass(frozen=True)
class Interface:
    """One address on a port: `address` is the host address, `prefix_len` its subnet."""

    address: int  # IPv4 address, host byte order
    prefix_len: int

    @property
    def network(self) -> ipaddress.IPv4Network:
        return ipaddress.IPv4Network((self.address, self.prefix_len), strict=False)

    def __str__(self) -> str:
        return f"{ipaddress.IPv4Address(self.address)}/{self.prefix_len}"


@dataclass(frozen=True)
class PortConfig:
    name: str
    driver: str
    mac: bytes  # 6 bytes
    mtu: int
    addresses: tuple[Interface, ...]
    rx: Path | None = None  # pcap driver
    tx: Path | None = None  # pcap driver
    iface: str | None = None  # afpacket driver
    device: str | None = None  # dpdk driver


@dataclass(frozen=True)
class NextHopConfig:
    via: int  # gateway, host byte order
    port: str | None = None  # egress port name (resolved from `via` when absent in the file)


@dataclass(frozen=True)
class RouteConfig:
    prefix: int  # network address, host byte order
    prefix_len: int
    type: str = "unicast"
    via: int | None = None
    port: str | None = None  # egress port name (resolved from `via` when absent)
    nexthops: tuple[NextHopConfig, ...] = ()
    # kept and shown, not a preference: the FIB holds one route per prefix, so a
    # second route to a prefix with another metric is refused (`replace` changes it)
    metric: int = 0


@dataclass(frozen=True)
class NeighborConfig:
    ip: int
    mac: bytes
    port: str


@dataclass(frozen=True)
class EngineConfig:
    workers: int = 1
    batch: int = 256
    control_socket: Path | None = None
    netns: str | None = None  # run inside this network namespace (/run/netns/NAME)
    datapath: str = "compiled"  # one of DATAPATHS: how the forwarding workers run the fast path
    log_level: str = "info"  # one of LOG_LEVELS


@dataclass(frozen=True)
class DpdkConfig:
    """`[dpdk]`: how the engine sets up DPDK's EAL for driver "dpdk" ports."""

    eal_args: tuple[str, ...] = ()  # passed to every process's rte_eal_init
    hugepages: str = "auto"  # on: required; off: --no-huge; auto: on if reserved
    mode: str = "auto"  # multi-process, single-process, or auto (see engine/io/dpdk/engine.py)
    memory_mb: int = 1024  # EAL memory (-m) without hugepages
    zero_copy: bool = True  # mbufs over the pool's rows where possible (engine/io/dpdk/engine.py)


@dataclass(frozen=True)
class Ipv4Config:
    accept_source_route: bool = False


@dataclass(frozen=True)
class ReassemblyConfig:
    mode: str = "full"
    timeout_s: float = 30.0
    high_thresh: int = 4 * 1024 * 1024
    low_thresh: int = 3 * 1024 * 1024


@dataclass(frozen=True)
class IcmpConfig:
    ratelimit_ms: int = 1000
    send_redirects: bool = True


@dataclass(frozen=True)
class MetricsConfig:
    """`[metrics]`: a Prometheus endpoint served by the control process (control/metrics.py)."""

    listen: tuple[str, int] | None = None  # (host, port); port 0: one the kernel picks


@dataclass(frozen=True)
class Config:
    path: Path
    engine: EngineConfig
    ports: tuple[PortConfig, ...]
    routes: tuple[RouteConfig, ...] = ()
    neighbors: tuple[NeighborConfig, ...] = ()
    ipv4: Ipv4Config = field(default_factory=Ipv4Config)
    reassembly: ReassemblyConfig = field(default_factory=ReassemblyConfig)
    icmp: IcmpConfig = field(default_factory=IcmpConfig)
    dpdk: DpdkConfig = field(default_factory=DpdkConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)

    def port_index(self, name: str) -> int:
        for i, port in enumerate(self.ports):
            if port.name == name:
                return i
        raise KeyError(name)


def format_config_error(path: str | os.PathLike[str], err: BaseException) -> str:
    """The line shown to a person: ``<path>: <message>``."""
    return f"{os.fspath(path)}: {err}"


def load_config(path: str | os.PathLike[str]) -> Config:
    """Read and validate a deployment config; raise `ConfigError` on any problem."""
    cfg_path = Path(path)
    try:
        with open(cfg_path, "rb") as f:
            doc = tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError("no such file") from None
    except IsADirectoryError:
        raise ConfigError("is a directory, not a config file") from None
    except PermissionError:
        raise ConfigError("permission denied") from None
    except OSError as err:
        raise ConfigError(f"cannot read: {err.strerror or err}") from None
    except UnicodeDecodeError as err:
        raise ConfigError(f"invalid TOML: not UTF-8 (byte offset {err.start})") from None
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"invalid TOML: {err}") from None
    return _Parser(cfg_path.absolute()).parse(doc)


# --- helpers -------------------------------------------------------------------------

_TOP_KEYS = ("include", "engine", "port", "route", "neighbor", "ipv4", "reassembly", "icmp",
             "dpdk", "metrics")
# what a file named by `include` may hold: route fragments (`fwd route save` writes them)
_INCLUDE_KEYS = ("route",)
MAX_METRIC = 0xFFFF_FFFF  # iproute2's metric is a u32
_METRICS_KEYS = ("listen",)
_LISTEN = re.compile(r"(?:\[([0-9A-Fa-f:.]+)\]|([A-Za-z0-9.-]+)):(\d{1,5})")
_ENGINE_KEYS = ("workers", "batch", "control_socket", "netns", "datapath", "log_level")
_DRIVER_KEYS = {"pcap": ("rx", "tx"), "afpacket": ("iface",), "dpdk": ("device",)}
_PORT_KEYS = ("name", "driver", "mac", "mtu", "addresses") + tuple(
    k for keys in _DRIVER_KEYS.values() for k in keys)
_ROUTE_KEYS = ("prefix", "type", "via", "port", "nexthops", "metric")
_NEXTHOP_KEYS = ("via", "port")
_NEIGHBOR_KEYS = ("ip", "mac", "port")
_IPV4_KEYS = ("accept_source_route",)
_REASSEMBLY_KEYS = ("mode", "timeout_s", "high_thresh", "low_thresh")
_ICMP_KEYS = ("ratelimit_ms", "send_redirects")
_DPDK_KEYS = ("eal_args", "hugepages", "mode", "memory_mb", "zero_copy")
DPDK_HUGEPAGES = ("auto", "on", "off")
DPDK_MODES = ("auto", "multi-process", "single-process")
# EAL options the engine sets itself, per process (the primary's and each worker's)
DPDK_ENGINE_EAL = ("-l", "-c", "--lcores", "--main-lcore", "--proc-type", "--file-prefix",
                   "--no-huge", "-m", "--socket-mem", "--no-shconf", "--in-memory",
                   "--huge-unlink", "--vdev", "-a", "--allow", "-b", "--block")

_IFNAME = re.compile(r"[A-Za-z0-9_.-]{1,15}")
_NETNS = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_MAC = re.compile(r"[0-9A-Fa-f]{2}(?::[0-9A-Fa-f]{2}){5}")
_CIDR = re.compile(r"(\d{1,3}(?:\.\d{1,3}){3})/(\d{1,2})")

_MARTIAN_ADDRESSES = (  # never a port address, a route destination or a neighbour
    (ipaddress.IPv4Network("127.0.0.0/8"), "a loopback address"),
    (ipaddress.IPv4Network("224.0.0.0/4"), "a multicast address"),
    (ipaddress.IPv4Network("255.255.255.255/32"), "the limited broadcast address"),
    (ipaddress.IPv4Network("0.0.0.0/32"), "the unspecified address"),
)


def _key(path: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else key


def _fail(key: str, problem: str) -> ConfigError:
    return ConfigError(f"{key}: {problem}", key)


def type_name(value: object, table: str = "a table") -> str:
    """How an error message names a value's type (TOML's words; `table` lets the
    control socket say "a map" for msgpack)."""
    if value is None:
        return "nil"
    if isinstance(value, bytes):
        return "binary"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a float"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return table
    return f"a {type(value).__name__}"  # TOML dates and times


def _suggest(word: str, choices: Iterable[str]) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _check_keys(table: dict[str, Any], path: str, known: tuple[str, ...]) -> None:
    for k in table:
        if k not in known:
            raise _fail(_key(path, k), "unknown key" + _suggest(k, known))


def _show(value: object) -> str:
    """A value as TOML spells it."""
    if isinstance(value, bool):
        return str(value).lower()
    return repr(value) if isinstance(value, str) else str(value)


def _expect(value: object, key: str, kind: type | tuple[type, ...], what: str) -> Any:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
        shown = f" ({_show(value)})" if isinstance(value, str | int | float) else ""
        raise _fail(key, f"expected {what}, got {type_name(value)}{shown}")
    return value


def _get(table: dict[str, Any], path: str, name: str, kind: type | tuple[type, ...],
         what: str, default: Any = None, required: bool = False) -> Any:
    key = _key(path, name)
    if name not in table:
        if required:
            raise _fail(key, "is required")
        return default
    return _expect(table[name], key, kind, what)


def _int_in(table: dict[str, Any], path: str, name: str, lo: int, hi: int | None,
            default: int) -> int:
    value = _get(table, path, name, int, "an integer", default)
    if value < lo or (hi is not None and value > hi):
        problem = f"is out of range {lo}..{hi}" if hi is not None else f"must be >= {lo}"
        raise _fail(_key(path, name), f"{value} {problem}")
    return value


def _choice(table: dict[str, Any], path: str, name: str, choices: tuple[str, ...],
            default: str | None = None, required: bool = False) -> str:
    value = _get(table, path, name, str, "a string", default, required)
    if value not in choices:
        raise _fail(_key(path, name), f"{value!r} is not one of {', '.join(choices)}"
                    + _suggest(value, choices))
    return value


def _table(doc: dict[str, Any], name: str) -> dict[str, Any]:
    value = doc.get(name, {})
    if isinstance(value, list):
        raise _fail(name, f"expected a table ([{name}]), got an array of tables ([[{name}]])")
    return _expect(value, name, dict, f"a table ([{name}])")


def _array_of_tables(doc: dict[str, Any], name: str) -> list[dict[str, Any]]:
    value = doc.get(name, [])
    if isinstance(value, dict):
        raise _fail(name, f"expected an array of tables ([[{name}]]), got a table ([{name}])")
    _expect(value, name, list, f"an array of tables ([[{name}]])")
    for i, item in enumerate(value):
        _expect(item, _key(name, i), dict, "a table")
    return value


def _parse_mac(value: object, key: str) -> bytes:
    _expect(value, key, str, "a string")
    if not _MAC.fullmatch(value):
        raise _fail(key, f"{value!r} is not a MAC address (expected xx:xx:xx:xx:xx:xx)")
    mac = bytes.fromhex(value.replace(":", ""))
    if mac[0] & 1:
        kind = "the broadcast" if mac == b"\xff" * 6 else "a multicast"
        raise _fail(key, f"{value!r} is {kind} MAC address; a unicast one is needed")
    if mac == bytes(6):
        raise _fail(key, f"{value!r} is the all-zero MAC address; a unicast one is needed")
    return mac


def _parse_ip(value: object, key: str) -> ipaddress.IPv4Address:
    _expect(value, key, str, "a string")
    try:
        return ipaddress.IPv4Address(value)
    except ValueError:
        raise _fail(key, f"{value!r} is not an IPv4 address") from None


def parse_cidr(value: object, key: str, min_len: int = 0) -> ipaddress.IPv4Interface:
    """An "a.b.c.d/len" string (dotted netmasks and missing lengths refused)."""
    _expect(value, key, str, "a string")
    m = _CIDR.fullmatch(value)
    if m is None:
        if "/" not in value:
            _parse_ip(value, key)  # a better message when the address itself is wrong
            raise _fail(key, f"{value!r} has no prefix length (expected a.b.c.d/len)")
        raise _fail(key, f"{value!r} is not an IPv4 prefix (expected a.b.c.d/len)")
    _parse_ip(m.group(1), key)
    length = int(m.group(2))
    if not min_len <= length <= 32:
        raise _fail(key, f"{value!r}: prefix length {length} is out of range {min_len}..32")
    return ipaddress.IPv4Interface(value)


def _martian(net: ipaddress.IPv4Network) -> str | None:
    for bad, what in _MARTIAN_ADDRESSES:
        if net.subnet_of(bad):
            return what
    return None


def _resolve(base: Path, value: str, key: str) -> Path:
    """A path from the config: relative ones are relative to the config's folder."""
    if not value:
        raise _fail(key, "is empty; a path is needed")
    if "\0" in value:
        raise _fail(key, f"{value!r} contains a NUL character")
    return base / value  # an absolute `value` replaces `base`


# --- the parser ------------------------------------------------------------------------


@dataclass
class _Owner:
    """A port's subnet, for gateway and neighbour checks."""

    port: str
    iface: ipaddress.IPv4Interface


class _Parser:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.base = path.parent
        self.port_names: dict[str, int] = {}
        self.subnets: list[_Owner] = []  # every address of every port
        self.local: dict[ipaddress.IPv4Address, str] = {}  # own address -> port
        self.port_macs: dict[bytes, str] = {}
        self.inputs: dict[Path, str] = {}  # resolved pcap input -> "port NAME"
        self.outputs: dict[Path, tuple[str, str, str]] = {}  # resolved output -> key, value, port
        self.endpoints: dict[tuple[str, str], str] = {}  # (iface|device, value) -> port

    def parse(self, doc: dict[str, Any]) -> Config:
        _check_keys(doc, "", _TOP_KEYS)
        engine = self.engine(_table(doc, "engine"))
        ports = self.ports(_array_of_tables(doc, "port"))
        routes = self.routes(_array_of_tables(doc, "route"))
        routes += self.includes(doc.get("include", []), {
            ipaddress.IPv4Network((r.prefix, r.prefix_len)): "the config's " + _key("route", i)
            for i, r in enumerate(routes)})
        neighbors = self.neighbors(_array_of_tables(doc, "neighbor"))
        return Config(
            path=self.path,
            engine=engine,
            ports=ports,
            routes=routes,
            neighbors=neighbors,
            ipv4=self.ipv4(_table(doc, "ipv4")),
            reassembly=self.reassembly(_table(doc, "reassembly")),
            icmp=self.icmp(_table(doc, "icmp")),
            dpdk=self.dpdk(_table(doc, "dpdk"), ports),
            metrics=self.metrics(_table(doc, "metrics")),
        )

    # [engine] ---------------------------------------------------------------------

    def engine(self, t: dict[str, Any]) -> EngineConfig:
        _check_keys(t, "engine", _ENGINE_KEYS)
        d = EngineConfig()
        workers = _int_in(t, "engine", "workers", 1, MAX_WORKERS, d.workers)
        batch = _int_in(t, "engine", "batch", 1, MAX_BATCH, d.batch)
        sock = _get(t, "engine", "control_socket", str, "a string (a path)")
        sock_path = None
        if sock is not None:
            sock_path = _resolve(self.base, sock, "engine.control_socket")
            size = len(os.fsencode(sock_path))
            if size > UNIX_PATH_MAX:
                raise _fail("engine.control_socket",
                            f"{str(sock_path)!r} is {size} bytes long; a Unix socket path "
                            f"holds at most {UNIX_PATH_MAX}")
        netns = _get(t, "engine", "netns", str, "a string (a network namespace name)")
        if netns is not None and (not _NETNS.fullmatch(netns) or netns in (".", "..")):
            raise _fail("engine.netns", f"{netns!r} is not a network namespace name "
                        "(as `ip netns add` takes: A-Z a-z 0-9 _ . -, no '/')")
        datapath = _choice(t, "engine", "datapath", DATAPATHS, default=d.datapath)
        log_level = _choice(t, "engine", "log_level", LOG_LEVELS, default=d.log_level)
        return EngineConfig(workers=workers, batch=batch, control_socket=sock_path,
                            netns=netns, datapath=datapath, log_level=log_level)

    # [[port]] ---------------------------------------------------------------------

    def ports(self, tables: list[dict[str, Any]]) -> tuple[PortConfig, ...]:
        if not tables:
            raise _fail("port", "at least one [[port]] is required")
        if len(tables) > MAX_PORTS:
            raise _fail("port", f"{len(tables)} ports configured; at most {MAX_PORTS} are "
                        f"supported (the engine's per-port arrays are sized for {MAX_PORTS})")
        ports = tuple(self.port(i, t) for i, t in enumerate(tables))
        replay = [p.driver == "pcap" for p in ports]
        if any(replay) and not all(replay):
            i = replay.index(not replay[0])
            raise _fail(_key(_key("port", i), "driver"),
                        f"{ports[i].driver!r} cannot be mixed with {ports[0].driver!r} ports: "
                        "pcap ports replay files and end with them, live ports run until "
                        "a signal")
        mixed = [i for i, p in enumerate(ports) if p.driver != ports[0].driver]
        if mixed:  # one driver per deployment (engine/io/registry.py)
            i = mixed[0]
            raise _fail(_key(_key("port", i), "driver"),
                        f"{ports[i].driver!r} cannot be mixed with {ports[0].driver!r} ports: "
                        "a deployment's ports share one driver")
        for out, (key, value, _) in self.outputs.items():  # never clobber an input
            if out in self.inputs:
                raise _fail(key, f"{value!r} is the input of {self.inputs[out]}; "
                            "writing it would destroy it")
        return ports

    def port(self, i: int, t: dict[str, Any]) -> PortConfig:
        p = _key("port", i)
        _check_keys(t, p, _PORT_KEYS)
        name = _get(t, p, "name", str, "a string", required=True)
        if not _IFNAME.fullmatch(name) or name in (".", ".."):
            raise _fail(_key(p, "name"), f"{name!r} is not a valid port name "
                        "(1 to 15 of A-Z a-z 0-9 _ . -, not '.' or '..')")
        if name in self.port_names:
            raise _fail(_key(p, "name"),
                        f"{name!r} is already the name of port[{self.port_names[name]}]")
        self.port_names[name] = i

        driver = _choice(t, p, "driver", DRIVERS, required=True)
        for other, keys in _DRIVER_KEYS.items():
            for k in keys:
                if other != driver and k in t:
                    raise _fail(_key(p, k), f"does not apply to driver {driver!r} "
                                f"(it is for {other} ports)")
        extra: dict[str, Any] = {}
        if driver == "pcap":
            extra = self.pcap(p, name, t)
        elif driver == "afpacket":
            iface = _get(t, p, "iface", str, "a string", required=True)
            if not _IFNAME.fullmatch(iface) or iface in (".", ".."):
                raise _fail(_key(p, "iface"), f"{iface!r} is not a valid interface name")
            self._unique_endpoint(p, name, "iface", iface)
            extra = {"iface": iface}
        else:
            device = _get(t, p, "device", str, "a string", required=True)
            if not device.strip():
                raise _fail(_key(p, "device"), "is empty (a PCI address or a vdev string)")
            self._unique_endpoint(p, name, "device", device)
            extra = {"device": device}

        mac = _parse_mac(_get(t, p, "mac", str, "a string", required=True), _key(p, "mac"))
        if mac in self.port_macs:
            raise _fail(_key(p, "mac"),
                        f"{t['mac']!r} is already the MAC of port {self.port_macs[mac]}")
        self.port_macs[mac] = name
        mtu = _int_in(t, p, "mtu", MIN_MTU, MAX_MTU, 1500)
        addresses = self.addresses(p, name, _get(t, p, "addresses", list, "an array", []))
        return PortConfig(name=name, driver=driver, mac=mac, mtu=mtu, addresses=addresses,
                          **extra)

    def pcap(self, p: str, name: str, t: dict[str, Any]) -> dict[str, Any]:
        rx_s = _get(t, p, "rx", str, "a string (a path)", required=True)
        tx_s = _get(t, p, "tx", str, "a string (a path)", required=True)
        rx = _resolve(self.base, rx_s, _key(p, "rx"))
        tx = _resolve(self.base, tx_s, _key(p, "tx"))
        try:
            st = rx.stat()
        except FileNotFoundError:
            raise _fail(_key(p, "rx"), f"file {rx_s!r} does not exist "
                        f"(looked for {str(rx)!r})") from None
        except OSError as err:
            raise _fail(_key(p, "rx"), f"{rx_s!r}: {err.strerror or err}") from None
        if not stat.S_ISREG(st.st_mode):
            raise _fail(_key(p, "rx"), f"{rx_s!r} is not a regular file ({str(rx)!r})")
        try:
            if tx.is_dir():
                raise _fail(_key(p, "tx"), f"{tx_s!r} is a directory; a file path is needed")
            rx_real, tx_real = rx.resolve(), tx.resolve()
        except OSError as err:
            raise _fail(_key(p, "tx"), f"{tx_s!r}: {err.strerror or err}") from None
        self.inputs.setdefault(rx_real, f"port {name}")
        if tx_real in self.outputs:
            raise _fail(_key(p, "tx"), f"{tx_s!r} is also the output of port "
                        f"{self.outputs[tx_real][2]}")
        self.outputs[tx_real] = (_key(p, "tx"), tx_s, name)
        return {"rx": rx, "tx": tx}

    def _unique_endpoint(self, p: str, name: str, key: str, value: str) -> None:
        if (key, value) in self.endpoints:
            raise _fail(_key(p, key),
                        f"{value!r} is already used by port {self.endpoints[(key, value)]}")
        self.endpoints[(key, value)] = name

    def addresses(self, p: str, name: str, values: list[Any]) -> tuple[Interface, ...]:
        out = []
        for j, value in enumerate(values):
            key = _key(_key(p, "addresses"), j)
            iface = parse_cidr(value, key, min_len=1)
            net, ip, length = iface.network, iface.ip, iface.network.prefixlen
            what = _martian(ipaddress.IPv4Network(ip))
            if what is not None:
                raise _fail(key, f"{value!r}: {ip} is {what}")
            if length <= 30 and ip in (net.network_address, net.broadcast_address):
                kind = "network" if ip == net.network_address else "broadcast"
                raise _fail(key, f"{value!r}: {ip} is the {kind} address of {net}; "
                            "a port needs a host address")
            if ip in self.local:
                raise _fail(key, f"{value!r}: {ip} is already an address of port "
                            f"{self.local[ip]}")
            for o in self.subnets:
                if o.port != name and net.overlaps(o.iface.network):
                    raise _fail(key, f"{value!r}: subnet {net} overlaps subnet "
                                f"{o.iface.network} of port {o.port} ({o.iface})")
            self.local[ip] = name
            self.subnets.append(_Owner(name, iface))
            out.append(Interface(int(ip), length))
        return tuple(out)

    # [[route]] --------------------------------------------------------------------

    def routes(self, tables: list[dict[str, Any]], base: str = "route",
               seen: dict[ipaddress.IPv4Network, str] | None = None) -> tuple[RouteConfig, ...]:
        """The [[route]]s of one file; `base` names their array in error keys and
        `seen` (prefix -> key) holds the routes of the files read before it."""
        seen = {} if seen is None else seen
        routes = []
        for i, t in enumerate(tables):
            r = self.route(i, t, base)
            net = ipaddress.IPv4Network((r.prefix, r.prefix_len))
            if net in seen:
                raise _fail(_key(_key(base, i), "prefix"),
                            f"{net} is already the prefix of {seen[net]}")
            seen[net] = _key(base, i)
            routes.append(r)
        return tuple(routes)

    def includes(self, value: object, seen: dict[ipaddress.IPv4Network, str]
                 ) -> tuple[RouteConfig, ...]:
        """The routes of the files `include` names (relative to the config's folder),
        in order: route fragments such as `fwd route save` writes. An error names the
        entry and the file, then the key inside it: ``include[0] (routes.toml):
        route[2].via: ...``."""
        _expect(value, "include", list, "an array of file names")
        routes: list[RouteConfig] = []
        files: dict[Path, str] = {}
        for k, name in enumerate(value):
            key = _key("include", k)
            _expect(name, key, str, "a file name (a string)")
            path = _resolve(self.base, name, key)
            if path.resolve() in files:
                raise _fail(key, f"{name!r} is already included by {files[path.resolve()]}")
            if path.resolve() == self.path.resolve():
                raise _fail(key, f"{name!r} is this config file itself")
            files[path.resolve()] = key
            where = f"{key} ({name})"
            try:
                with open(path, "rb") as f:
                    doc = tomllib.load(f)
            except FileNotFoundError:
                raise _fail(where, "no such file") from None
            except IsADirectoryError:
                raise _fail(where, "is a directory, not a route file") from None
            except OSError as err:
                raise _fail(where, f"cannot read: {err.strerror or err}") from None
            except UnicodeDecodeError as err:
                raise _fail(where, f"invalid TOML: not UTF-8 (byte offset {err.start})") \
                    from None
            except tomllib.TOMLDecodeError as err:
                raise _fail(where, f"invalid TOML: {err}") from None
            for top in doc:
                if top not in _INCLUDE_KEYS:
                    raise _fail(f"{where}: {top}", "an included file holds [[route]]s only"
                                + _suggest(top, _INCLUDE_KEYS))
            try:
                tables = _array_of_tables(doc, "route")
            except ConfigError as err:
                raise ConfigError(f"{where}: {err}", f"{where}: {err.key}") from None
            routes += self.routes(tables, f"{where}: route", seen)
        return tuple(routes)

    def route(self, i: int, t: dict[str, Any], array: str = "route") -> RouteConfig:
        p = _key(array, i)
        _check_keys(t, p, _ROUTE_KEYS)
        net = self.prefix(p, _get(t, p, "prefix", str, "a string", required=True))
        rtype = _choice(t, p, "type", ROUTE_TYPES, default="unicast")
        base = {"prefix": int(net.network_address), "prefix_len": net.prefixlen,
                "type": rtype, "metric": _int_in(t, p, "metric", 0, MAX_METRIC, 0)}
        if rtype != "unicast":
            for k in ("via", "port", "nexthops"):
                if k in t:
                    raise _fail(_key(p, k), f"a {rtype} route takes no {k}")
            return RouteConfig(**base)
        if "via" in t and "nexthops" in t:
            raise _fail(p, "give either via or nexthops, not both")
        if not any(k in t for k in ("via", "port", "nexthops")):
            raise _fail(p, "a unicast route needs via, port or nexthops (or a type: "
                        + ", ".join(ROUTE_TYPES[1:]) + ")")
        port = _get(t, p, "port", str, "a string")
        if port is not None:
            self.port_ref(_key(p, "port"), port)
        if "nexthops" in t:
            nexthops = self.nexthops(_key(p, "nexthops"), t["nexthops"], port)
            return RouteConfig(**base, port=port, nexthops=nexthops)
        if "via" in t:
            via = _parse_ip(t["via"], _key(p, "via"))
            port = self.gateway(_key(p, "via"), via, port)
            return RouteConfig(**base, via=int(via), port=port)
        return RouteConfig(**base, port=port)

    def prefix(self, p: str, value: str) -> ipaddress.IPv4Network:
        key = _key(p, "prefix")
        iface = parse_cidr(value, key)
        net = iface.network
        if iface.ip != net.network_address:
            raise _fail(key, f"{value!r} has host bits set (the network is {net})")
        what = _martian(net)
        if what is not None:
            raise _fail(key, f"{net} is {what}, never forwarded")
        for o in self.subnets:
            if net == o.iface.network:
                raise _fail(key, f"{net} is the connected subnet of port {o.port} "
                            "(a static route to it would be shadowed)")
            if net.prefixlen == 32 and net.network_address == o.iface.ip:
                raise _fail(key, f"{net} is an address of port {o.port} "
                            "(the local route would shadow it)")
            if (net.prefixlen == 32 and o.iface.network.prefixlen <= 30
                    and net.network_address == o.iface.network.broadcast_address):
                raise _fail(key, f"{net} is the broadcast address of port {o.port}'s "
                            f"subnet {o.iface.network} (the local route would shadow it)")
        return net

    def port_ref(self, key: str, name: str) -> None:
        if name not in self.port_names:
            raise _fail(key, f"{name!r} is not a port (ports: {', '.join(self.port_names)})")

    def gateway(self, key: str, gw: ipaddress.IPv4Address, port: str | None) -> str:
        """Check a gateway and return the port it is reached through."""
        if gw in self.local:
            raise _fail(key, f"gateway {gw} is this router's own address (port "
                        f"{self.local[gw]})")
        owners = [o for o in self.subnets if gw in o.iface.network
                  and (port is None or o.port == port)]
        if not owners:
            if port is None:
                raise _fail(key, f"gateway {gw} is not on any port's subnet")
            subnets = sorted({str(o.iface.network) for o in self.subnets if o.port == port})
            on = f" ({', '.join(subnets)})" if subnets else " (it has no addresses)"
            raise _fail(key, f"gateway {gw} is not on port {port}'s subnet{on}")
        for o in owners:
            net = o.iface.network
            if net.prefixlen <= 30 and gw in (net.network_address, net.broadcast_address):
                kind = "network" if gw == net.network_address else "broadcast"
                raise _fail(key, f"gateway {gw} is the {kind} address of port "
                            f"{o.port}'s subnet {net}")
        return owners[0].port

    def nexthops(self, key: str, value: object, port: str | None) -> tuple[NextHopConfig, ...]:
        _expect(value, key, list, "an array of tables ({via = ...})")
        if not value:
            raise _fail(key, "needs at least one next hop")
        if len(value) > MAX_NEXTHOPS:
            raise _fail(key, f"{len(value)} next hops; at most {MAX_NEXTHOPS} are supported")
        out: list[NextHopConfig] = []
        for j, nh in enumerate(value):
            k = _key(key, j)
            _expect(nh, k, dict, "a table ({via = ...})")
            _check_keys(nh, k, _NEXTHOP_KEYS)
            via = _parse_ip(_get(nh, k, "via", str, "a string", required=True), _key(k, "via"))
            nh_port = _get(nh, k, "port", str, "a string")
            if nh_port is not None:
                self.port_ref(_key(k, "port"), nh_port)
                if port is not None and nh_port != port:
                    raise _fail(_key(k, "port"), f"{nh_port!r} differs from the route's "
                                f"port {port!r}")
            resolved = self.gateway(_key(k, "via"), via, nh_port or port)
            hop = NextHopConfig(via=int(via), port=resolved)
            if hop in out:
                raise _fail(k, f"duplicates {_key(key, out.index(hop))} ({via} on {resolved})")
            out.append(hop)
        return tuple(out)

    # [[neighbor]] -----------------------------------------------------------------

    def neighbors(self, tables: list[dict[str, Any]]) -> tuple[NeighborConfig, ...]:
        seen: dict[ipaddress.IPv4Address, int] = {}
        out = []
        for i, t in enumerate(tables):
            p = _key("neighbor", i)
            _check_keys(t, p, _NEIGHBOR_KEYS)
            ip = _parse_ip(_get(t, p, "ip", str, "a string", required=True), _key(p, "ip"))
            mac = _parse_mac(_get(t, p, "mac", str, "a string", required=True),
                             _key(p, "mac"))
            port = _get(t, p, "port", str, "a string", required=True)
            self.port_ref(_key(p, "port"), port)
            if ip in seen:
                raise _fail(_key(p, "ip"), f"{ip} is already neighbor[{seen[ip]}]")
            seen[ip] = i
            if ip in self.local:
                raise _fail(_key(p, "ip"), f"{ip} is this router's own address (port "
                            f"{self.local[ip]})")
            owners = [o for o in self.subnets if o.port == port and ip in o.iface.network]
            if not owners:
                subnets = sorted({str(o.iface.network) for o in self.subnets if o.port == port})
                on = f" ({', '.join(subnets)})" if subnets else " (it has no addresses)"
                raise _fail(_key(p, "ip"), f"{ip} is not on port {port}'s subnet{on}")
            for o in owners:
                net = o.iface.network
                if net.prefixlen <= 30 and ip in (net.network_address, net.broadcast_address):
                    kind = "network" if ip == net.network_address else "broadcast"
                    raise _fail(_key(p, "ip"), f"{ip} is the {kind} address of port "
                                f"{port}'s subnet {net}")
            if mac in self.port_macs:
                raise _fail(_key(p, "mac"), f"{t['mac']!r} is the MAC of port "
                            f"{self.port_macs[mac]}, not a neighbour's")
            out.append(NeighborConfig(ip=int(ip), mac=mac, port=port))
        return tuple(out)

    # [ipv4], [reassembly], [icmp] -------------------------------------------------

    def ipv4(self, t: dict[str, Any]) -> Ipv4Config:
        _check_keys(t, "ipv4", _IPV4_KEYS)
        d = Ipv4Config()
        return Ipv4Config(accept_source_route=_get(
            t, "ipv4", "accept_source_route", bool, "a boolean", d.accept_source_route))

    def reassembly(self, t: dict[str, Any]) -> ReassemblyConfig:
        p = "reassembly"
        _check_keys(t, p, _REASSEMBLY_KEYS)
        d = ReassemblyConfig()
        mode = _choice(t, p, "mode", REASSEMBLY_MODES, default=d.mode)
        timeout = _get(t, p, "timeout_s", (int, float), "a number of seconds", d.timeout_s)
        if not math.isfinite(timeout) or timeout <= 0:
            raise _fail(_key(p, "timeout_s"), f"{timeout} must be a positive number of seconds")
        high = _int_in(t, p, "high_thresh", 1, None, d.high_thresh)
        low = _int_in(t, p, "low_thresh", 1, None, d.low_thresh)
        if low >= high:
            key = "low_thresh" if "low_thresh" in t else "high_thresh"
            raise _fail(_key(p, key), f"low_thresh ({low}) must be below high_thresh ({high})")
        return ReassemblyConfig(mode=mode, timeout_s=float(timeout), high_thresh=high,
                                low_thresh=low)

    def icmp(self, t: dict[str, Any]) -> IcmpConfig:
        _check_keys(t, "icmp", _ICMP_KEYS)
        d = IcmpConfig()
        return IcmpConfig(
            ratelimit_ms=_int_in(t, "icmp", "ratelimit_ms", 0, None, d.ratelimit_ms),
            send_redirects=_get(t, "icmp", "send_redirects", bool, "a boolean",
                                d.send_redirects),
        )

    # [metrics] --------------------------------------------------------------------

    def metrics(self, t: dict[str, Any]) -> MetricsConfig:
        _check_keys(t, "metrics", _METRICS_KEYS)
        listen = _get(t, "metrics", "listen", str, "a string (\"host:port\")")
        if listen is None:
            return MetricsConfig()
        m = _LISTEN.fullmatch(listen)
        if m is None:
            raise _fail("metrics.listen", f"{listen!r} is not host:port (e.g. "
                        "\"127.0.0.1:9108\", \"[::1]:9108\")")
        host = m.group(1) or m.group(2)
        if m.group(1) is not None:
            try:
                ipaddress.IPv6Address(host)
            except ValueError:
                raise _fail("metrics.listen", f"{host!r} is not an IPv6 address") from None
        port = int(m.group(3))
        if port > 65535:
            raise _fail("metrics.listen", f"port {port} is not a TCP port (0..65535)")
        return MetricsConfig(listen=(host, port))

    # [dpdk] -----------------------------------------------------------------------

    def dpdk(self, t: dict[str, Any], ports: tuple[PortConfig, ...]) -> DpdkConfig:
        p = "dpdk"
        _check_keys(t, p, _DPDK_KEYS)
        d = DpdkConfig()
        if t and not any(port.driver == "dpdk" for port in ports):
            raise _fail(p, "applies to driver 'dpdk' ports, and this config has none")
        args = _get(t, p, "eal_args", list, "an array of strings", [])
        for j, arg in enumerate(args):
            key = _key(_key(p, "eal_args"), j)
            _expect(arg, key, str, "a string")
            flag = arg.split("=", 1)[0]
            if flag in DPDK_ENGINE_EAL:
                raise _fail(key, f"{arg!r}: the engine sets {flag} itself (devices come from "
                            "[[port]] device, memory from [dpdk] hugepages and memory_mb)")
            if "\0" in arg:
                raise _fail(key, f"{arg!r} contains a NUL character")
        hugepages = _choice(t, p, "hugepages", DPDK_HUGEPAGES, default=d.hugepages)
        mode = _choice(t, p, "mode", DPDK_MODES, default=d.mode)
        memory = _int_in(t, p, "memory_mb", 64, 1 << 20, d.memory_mb)
        zero_copy = _get(t, p, "zero_copy", bool, "a boolean", d.zero_copy)
        if mode == "multi-process" and hugepages == "off":
            raise _fail(_key(p, "mode"), "'multi-process' needs hugepages (DPDK shares "
                        "memory between processes only through hugepage files), but "
                        "dpdk.hugepages is 'off'")
        # whether each device serves secondaries is the driver's to say: fwd check asks
        # it through engine/io/registry.py
        return DpdkConfig(eal_args=tuple(args), hugepages=hugepages, mode=mode,
                          memory_mb=memory, zero_copy=zero_copy)


# --- routes given at run time ----------------------------------------------------------


class RouteChecker:
    """Checks [[route]]-like tables given at run time (the control socket's routes)
    against a loaded config's ports, by the config file's own rules. Its ConfigError
    names keys relative to the table ("via: ..."; key None: the table as a whole)."""

    def __init__(self, cfg: Config) -> None:
        parser = _Parser(cfg.path)
        # the parser state route() reads: port names, subnets, own addresses
        for i, port in enumerate(cfg.ports):
            parser.port_names[port.name] = i
            for a in port.addresses:
                iface = ipaddress.IPv4Interface((a.address, a.prefix_len))
                parser.subnets.append(_Owner(port.name, iface))
                parser.local[iface.ip] = port.name
        self._parser = parser

    def route(self, table: dict[str, Any]) -> RouteConfig:
        """The table as a validated RouteConfig, or ConfigError."""
        try:
            return self._parser.route(0, table)
        except ConfigError as err:
            msg = str(err)
            key = err.key or ""
            if not (key.startswith("route[0]") and msg.startswith(key + ": ")):
                raise
            sub = key[len("route[0]"):].lstrip(".")
            raise ConfigError((f"{sub}: " if sub else "") + msg[len(key) + 2:],
                              sub or None) from None
