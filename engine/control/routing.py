"""Control plane: the next-hop table, the FIB, routes and port state.

Run only in the control process (the FIB's single writer). What the kernel keeps in
its local and main tables becomes FIB entries pointing at next-hop rows (the way VPP
points routes at adjacencies):

- each port address: a /32 `local` entry; its subnet: a connected (on-link,
  unresolved) entry on the port; the subnet's directed broadcast (prefixes up to
  /30): a `broadcast` entry, as the kernel's local table has;
- each static neighbour: a /32 resolved entry carrying its MAC (neighbour state, not
  a route: hidden from route listings unless asked for), and a PERMANENT entry in
  the shared neighbour table (engine/shm/neigh_table.py), put there before the workers
  start; every other neighbour is learned by ARP in the slow path into that table,
  which the fast path reads for next hops without a MAC (connected routes, gateways
  that are not static neighbours);
- each `[[route]]`, and each route added later through the control socket: a gateway
  next hop (resolved when the gateway is a static neighbour), an on-link next hop on
  a port, or one of the fixed error rows.

`Routing` keeps two tables beside the FIB: `static` (config and CLI routes, each with
its origin: what `route del`, `replace` and `flush` may change) and `internal`
(connected, broadcast, neighbour and local entries, derived from ports and
neighbours). When both hold a prefix the internal entry is the one in the FIB, as
the kernel's local table is looked up before main.

Port state: a port-up bit mask in shared memory (`CTL_PORT_UP`), read live by the
fast path through `PortMask` (engine/pipeline/tables.py), plus `nh_mtu` kept 0 for
every next hop on a down port so that the plain tier (one `tot_len <= nh_mtu`
compare) never forwards through it; every change bumps `CTL_NH_GEN` so that workers
flush what they cache.

An ECMP route points at a group row whose members are next-hop rows; the route
stage picks one member per flow (`route.select_multipath`).
"""

from __future__ import annotations

import dataclasses
import ipaddress
from dataclasses import dataclass, field
from typing import Any

import numpy as np

# config.py's RouteChecker validates a [[route]] table against the ports: one set of
# rules for the config file and the control socket
from engine.config import (
    MAX_MTU,
    MIN_MTU,
    Config,
    ConfigError,
    NextHopConfig,
    RouteChecker,
    RouteConfig,
    parse_cidr,
)
from engine.control.routespec import RouteWordsError, parse_route_words
from engine.shm.fib import FibError, FibWriter
from engine.shm.memory import (
    CTL_NH_GEN,
    CTL_PORT_UP,
    NH_BLACKHOLE,
    NH_BROADCAST,
    NH_LOCAL,
    NH_NOROUTE,
    NH_PROHIBIT,
    NH_TYPE_NAMES,
    NH_UNICAST,
    NH_UNREACHABLE,
    NHF_GATEWAY,
    NHF_RESOLVED,
    EngineMemory,
)
from engine.shm.neigh_table import NeighbourTable, Nud

ROUTE_TYPE_NH = {"blackhole": NH_BLACKHOLE, "unreachable": NH_UNREACHABLE,
                 "prohibit": NH_PROHIBIT}

# where a route came from (iproute2's `proto`): the config file (and its includes), the
# control socket (`fwd route add|replace|load`); the last four are internal entries,
# derived from ports and neighbours, never changed by a route command
ORIGIN_CONFIG, ORIGIN_CLI = "config", "cli"
ORIGIN_CONNECTED, ORIGIN_BROADCAST, ORIGIN_NEIGHBOUR, ORIGIN_LOCAL = (
    "connected", "broadcast", "neighbour", "local")
ROUTE_ORIGINS = (ORIGIN_CONFIG, ORIGIN_CLI)  # what `route flush origin O` may select
# a load of at least this many routes is published with one FibWriter.bulk_load (a private
# rebuild, then one store per changed entry) instead of one add per route
BULK_LOAD_MIN = 4096

_MASKS = [(0xFFFF_FFFF << (32 - n)) & 0xFFFF_FFFF for n in range(33)]


class RouteError(ValueError):
    """A route request that cannot be applied; the message says why. Nothing changed."""


def fmt_prefix(prefix: int, prefix_len: int) -> str:
    return f"{ipaddress.IPv4Address(prefix)}/{prefix_len}"


def _ip(addr: int | None) -> str | None:
    return None if addr is None else str(ipaddress.IPv4Address(addr))


@dataclass(frozen=True)
class Route:
    """One entry of the route tables `Routing` keeps beside the FIB."""

    prefix: int
    prefix_len: int
    type: str  # unicast | blackhole | unreachable | prohibit | local | broadcast
    origin: str  # ORIGIN_*
    nh: int  # next-hop row in shared memory
    via: int | None = None
    port: str | None = None
    nexthops: tuple[NextHopConfig, ...] = ()
    metric: int = 0

    @property
    def key(self) -> tuple[int, int]:
        return self.prefix, self.prefix_len

    def same_as(self, other: Route | None) -> bool:
        """The same route whatever its origin: a replace by it changes nothing."""
        return other is not None and dataclasses.replace(other, origin=self.origin) == self

    def as_dict(self, shadowed: bool = False) -> dict[str, Any]:
        """The row `route.show` sends: plain types only (msgpack, JSON)."""
        row: dict[str, Any] = {
            "prefix": fmt_prefix(self.prefix, self.prefix_len),
            "type": self.type,
            "via": _ip(self.via),
            "port": self.port,
            "origin": self.origin,
            "metric": self.metric,
            "connected": self.origin == ORIGIN_CONNECTED,
            "local": self.origin == ORIGIN_LOCAL,
        }
        if self.nexthops:
            row["nexthops"] = [{"via": _ip(h.via), "port": h.port} for h in self.nexthops]
        if shadowed:
            row["shadowed"] = True  # a static route under an internal entry
        return row


@dataclass
class NextHops:
    """Allocator of next-hop rows in shared memory; identical next hops share a row.

    Rows are never freed: a route deleted leaves its row for the next route through
    the same next hop (a table of `max_nexthops` rows holds far more distinct
    gateways than a router has neighbours)."""

    mem: EngineMemory
    rows: dict[tuple, int] = field(default_factory=dict)
    members_used: int = 0  # entries of nhg_members taken by groups

    def __post_init__(self) -> None:
        for nh_type in (NH_NOROUTE, NH_BLACKHOLE, NH_UNREACHABLE, NH_PROHIBIT):
            self.get(nh_type)
        assert self.rows[(NH_NOROUTE, 0, 0, 0, b"")] == 0  # a FIB miss reads row 0

    def get(self, nh_type: int, flags: int = 0, port: int = 0, gw: int = 0,
            mac: bytes = b"") -> int:
        key = (nh_type, flags, port, gw, mac)
        if key not in self.rows:
            i = len(self.rows)
            if i >= len(self.mem.nh_type):
                raise RouteError(f"next-hop table is full ({i} rows)")
            self.mem.nh_flags[i] = flags
            self.mem.nh_port[i] = port
            self.mem.nh_gw[i] = gw
            self.mem.nh_mac[i, :] = 0
            self.mem.nh_mac[i, : len(mac)] = np.frombuffer(mac, dtype=np.uint8)
            self.mem.nh_type[i] = nh_type  # the row is complete when typed
            # resolved or not: the fast path resolves neighbours itself (forward.py)
            plain = nh_type == NH_UNICAST and self.port_up(port)
            self.mem.nh_mtu[i] = self.mem.port_mtu[port] if plain else 0
            self.rows[key] = i
        return self.rows[key]

    def group(self, members: tuple[int, ...]) -> int:
        """A row standing for an ECMP group of next-hop rows (`select_multipath` in the
        route stage picks one member per flow). Members are written before the row
        says it has them, and the row before any FIB entry points at it."""
        if len(members) == 1:
            return members[0]
        key = ("group", members)
        if key not in self.rows:
            i = len(self.rows)
            if i >= len(self.mem.nh_type):
                raise RouteError(f"next-hop table is full ({i} rows)")
            base = self.members_used
            if base + len(members) > len(self.mem.nhg_members):
                raise RouteError("next-hop group table is full")
            self.mem.nhg_members[base : base + len(members)] = members
            self.members_used += len(members)
            self.mem.nh_type[i] = NH_UNICAST
            self.mem.nh_mtu[i] = 0  # never forwarded as itself: a member is chosen first
            self.mem.nh_group[i] = base
            self.mem.nh_group_n[i] = len(members)
            self.rows[key] = i
        return self.rows[key]

    def port_up(self, port: int) -> bool:
        return bool((int(self.mem.ctl[CTL_PORT_UP]) >> port) & 1)

    def set_port_mtu(self, port: int) -> None:
        """nh_mtu of every unicast row on `port` (groups aside): the port's MTU while
        it is up, 0 while it is down (which takes those rows out of the plain tier)."""
        n = len(self.rows)
        m = self.mem
        rows = np.flatnonzero((m.nh_port[:n] == port) & (m.nh_type[:n] == NH_UNICAST)
                              & (m.nh_group_n[:n] <= 1))
        m.nh_mtu[rows] = m.port_mtu[port] if self.port_up(port) else 0


class Routing:
    """The control plane's routes and port state over the shared next-hop table and
    the FIB. One instance, in the control process (the FIB's only writer)."""

    def __init__(self, cfg: Config, mem: EngineMemory, fib: FibWriter) -> None:
        self.cfg = cfg
        self.mem = mem
        self.fib = fib
        self.port_names = [p.name for p in cfg.ports]
        self.static: dict[tuple[int, int], Route] = {}
        self.internal: dict[tuple[int, int], Route] = {}  # the entry the FIB holds per key
        self.internal_all: list[Route] = []  # every internal entry, for `show --all`
        self.neighbours = {n.ip: (cfg.port_index(n.port), n.mac) for n in cfg.neighbors}
        for p, port in enumerate(cfg.ports):
            mem.port_mac[p, :] = 0
            mem.port_mac[p, :6] = np.frombuffer(port.mac, dtype=np.uint8)
            mem.port_mtu[p] = port.mtu
        mem.ctl[CTL_PORT_UP] = (1 << len(cfg.ports)) - 1  # every port starts up
        self.nhs = NextHops(mem)
        self._checker: RouteChecker | None = None

    # ------------------------------------------------------------------ building

    def build(self) -> None:
        """Fill the next-hop table and the FIB from the config."""
        for r in self.cfg.routes:
            route = self._route(r, ORIGIN_CONFIG)
            self.static[route.key] = route
        # connected and local entries after [[route]]s: the kernel's local table wins;
        # in this order a later entry for the same key replaces an earlier one
        internal: list[Route] = []
        for p, port in enumerate(self.cfg.ports):
            for a in port.addresses:
                net = a.network
                internal.append(Route(int(net.network_address), a.prefix_len, "unicast",
                                      ORIGIN_CONNECTED, self.nhs.get(NH_UNICAST, 0, p),
                                      port=port.name))
                if a.prefix_len <= 30:
                    internal.append(Route(int(net.broadcast_address), 32, "broadcast",
                                          ORIGIN_BROADCAST, self.nhs.get(NH_BROADCAST, 0, p),
                                          port=port.name))
        table = NeighbourTable(self.mem)
        for ip, (p, mac) in self.neighbours.items():
            # updated_ns 0: from the config; a PERMANENT entry has no timer to run
            if not table.put(ip, p, mac, Nud.PERMANENT, 0):
                raise RouteError(f"neighbor {ipaddress.IPv4Address(ip)}: the neighbour "
                                 f"table is full ({table.capacity} entries)")
            internal.append(Route(ip, 32, "unicast", ORIGIN_NEIGHBOUR,
                                  self.nhs.get(NH_UNICAST, NHF_RESOLVED, p, ip, mac),
                                  via=ip, port=self.port_names[p]))
        for p, port in enumerate(self.cfg.ports):
            for a in port.addresses:
                internal.append(Route(a.address, 32, "local", ORIGIN_LOCAL,
                                      self.nhs.get(NH_LOCAL, 0, p), port=port.name))
        self.internal_all = internal
        for route in internal:
            self.internal[route.key] = route
        for key, route in self.static.items():
            if key not in self.internal:
                self.fib.add(route.prefix, route.prefix_len, route.nh)
        for route in self.internal.values():
            self.fib.add(route.prefix, route.prefix_len, route.nh)

    def reload_routes(self, routes: tuple[RouteConfig, ...]) -> dict[str, list[str]]:
        """SIGHUP: the config's [[route]]s become `routes` (a re-read config's, checked
        against the same ports and neighbours). Routes added at run time and the
        entries of addresses and neighbours stay; a changed route is replaced in place
        (the FIB entry takes its new next hop, no window through a shorter prefix)."""
        new = {(r.prefix, r.prefix_len): r for r in routes}
        done: dict[str, list[str]] = {"added": [], "changed": [], "removed": [],
                                      "kept_added": []}
        for key, route in list(self.static.items()):
            if route.origin == ORIGIN_CONFIG and key not in new:
                del self.static[key]
                if key not in self.internal:  # else the internal entry keeps the slot
                    self.fib.delete(*key)
                done["removed"].append(fmt_prefix(*key))
        for key, rc in new.items():
            old = self.static.get(key)
            if old is not None and old.origin != ORIGIN_CONFIG:
                done["kept_added"].append(fmt_prefix(*key))  # the operator's, as `ip route`
                continue
            route = self._route(rc, ORIGIN_CONFIG)
            if old == route:
                continue
            if key not in self.internal:
                try:
                    self.fib.add(route.prefix, route.prefix_len, route.nh)
                except FibError as err:  # Tbl8Exhausted: the FIB is unchanged
                    raise RouteError(f"{fmt_prefix(*key)}: {err}") from None
            self.static[key] = route
            done["changed" if old is not None else "added"].append(fmt_prefix(*key))
        return done

    def _route(self, r: RouteConfig, origin: str) -> Route:
        """A validated RouteConfig and its next-hop row."""
        if r.type in ROUTE_TYPE_NH:
            nh = self.nhs.get(ROUTE_TYPE_NH[r.type])
        elif r.nexthops:
            nh = self.nhs.group(tuple(
                self._gateway_nh(h.via, self.cfg.port_index(h.port or _port_of(self.cfg, h.via)))
                for h in r.nexthops))
        elif r.via is not None:
            nh = self._gateway_nh(r.via, self.cfg.port_index(r.port or _port_of(self.cfg, r.via)))
        else:
            nh = self.nhs.get(NH_UNICAST, 0, self.cfg.port_index(r.port))
        return Route(r.prefix, r.prefix_len, r.type, origin, nh, r.via, r.port, r.nexthops,
                     r.metric)

    def _gateway_nh(self, gw: int, port: int) -> int:
        if gw in self.neighbours:
            return self.nhs.get(NH_UNICAST, NHF_GATEWAY | NHF_RESOLVED, port, gw,
                                self.neighbours[gw][1])
        return self.nhs.get(NH_UNICAST, NHF_GATEWAY, port, gw)

    # ------------------------------------------------------------------ validation

    def validate(self, table: dict[str, Any], where: str = "") -> RouteConfig:
        """A [[route]]-like table checked by the config loader's own rules; RouteError
        names the key (`where` is prepended, e.g. "line 3: ")."""
        if self._checker is None:
            self._checker = RouteChecker(self.cfg)
        try:
            return self._checker.route(table)
        except ConfigError as err:
            raise RouteError(where + str(err)) from None

    def _check_internal(self, key: tuple[int, int], where: str = "") -> None:
        if key in self.internal:
            r = self.internal[key]
            raise RouteError(f"{where}{fmt_prefix(*key)} is the {r.origin} entry of port "
                             f"{r.port}; a route cannot replace it")

    def _check_new(self, key: tuple[int, int], where: str = "", metric: int = 0) -> None:
        """A route to `key` may be added: no route and no internal entry has it."""
        old = self.static.get(key)
        if old is not None:
            # iproute2's answer (EEXIST); the FIB holds one route per prefix, so another
            # metric does not make a second route either
            other = (f"; its metric is {old.metric}, and the FIB holds one route per "
                     "prefix whatever the metric" if old.metric != metric else "")
            raise RouteError(f"{where}{fmt_prefix(*key)}: File exists (a route from the "
                             f"{old.origin}{other}); `fwd route replace` changes it")
        self._check_internal(key, where)

    # ------------------------------------------------------------------ changes

    def add(self, table: dict[str, Any], replace: bool = False) -> tuple[Route, str]:
        """Add one route given as a [[route]] table (prefix, type, via, port, nexthops,
        metric) and say what happened: "added", or with `replace` (`ip route replace`)
        also "changed" (the FIB entry takes the new next hop in place: no window
        through a shorter prefix) or "unchanged" (the same route was there)."""
        rc = self.validate(table)
        key = (rc.prefix, rc.prefix_len)
        if replace:
            self._check_internal(key)
        else:
            self._check_new(key, metric=rc.metric)
        route = self._route(rc, ORIGIN_CLI)
        old = self.static.get(key)
        if route.same_as(old):
            assert old is not None
            return old, "unchanged"
        try:
            self.fib.add(route.prefix, route.prefix_len, route.nh)
        except FibError as err:  # Tbl8Exhausted: the FIB is unchanged
            raise RouteError(f"{fmt_prefix(*key)}: {err}") from None
        self.static[key] = route
        return route, "added" if old is None else "changed"

    def delete(self, prefix: str) -> Route:
        """Delete a config or CLI route; the next less-specific route takes over."""
        return self.delete_many([prefix])[0]

    def delete_matching(self, table: dict[str, Any]) -> Route:
        """`ip route del [TYPE] PREFIX [via GW] [dev P] [metric N]`: delete the route
        to the prefix only if it is what the other words say (each given word must
        match: a gateway or port of any ECMP member does), as iproute2 matches."""
        key = self._parse_prefix(str(table.get("prefix")))
        route = self.static.get(key)
        if route is not None:
            vias = {_ip(h.via) for h in route.nexthops} or {_ip(route.via)}
            ports = {h.port for h in route.nexthops} or {route.port}
            wrong = [w for w, ok in (
                ("type", table.get("type", route.type) == route.type),
                ("via", table.get("via", next(iter(vias))) in vias),
                ("dev", table.get("port", next(iter(ports))) in ports),
                ("metric", table.get("metric", route.metric) == route.metric)) if not ok]
            if wrong:
                raise RouteError(f"no route {fmt_prefix(*key)} with that {', '.join(wrong)} "
                                 "(No such process): `fwd route show` lists the one there")
        return self.delete_many([fmt_prefix(*key)])[0]

    def delete_many(self, prefixes: list[str]) -> list[Route]:
        """Delete config or CLI routes: all of them, or none when one is missing."""
        keys = [self._parse_prefix(p) for p in prefixes]
        for key in keys:
            if key in self.static:
                continue
            if key in self.internal:
                r = self.internal[key]
                source = "[[neighbor]]" if r.origin == ORIGIN_NEIGHBOUR else "address"
                raise RouteError(f"{fmt_prefix(*key)} is the {r.origin} entry of port "
                                 f"{r.port}; it comes from the config's {source}, not from "
                                 "a route")
            raise RouteError(f"no route {fmt_prefix(*key)}"
                             + ("; nothing was deleted" if len(keys) > 1 else ""))
        if len(set(keys)) != len(keys):
            dup = next(k for k in keys if keys.count(k) > 1)
            raise RouteError(f"{fmt_prefix(*dup)} is given twice; nothing was deleted")
        return [self._remove(key) for key in keys]

    def _remove(self, key: tuple[int, int]) -> Route:
        route = self.static.pop(key)
        if key not in self.internal:  # else the internal entry keeps the FIB slot
            self.fib.delete(*key)
        return route

    def flush(self, prefix: str | None = None, origin: str | None = None) -> list[Route]:
        """Delete the config and CLI routes inside `prefix` (itself and every longer
        prefix under it) and/or of `origin`; at least one selector, as `ip route flush`
        wants one. Connected, local, broadcast and neighbour entries are never touched:
        they come from the ports' addresses and the [[neighbor]]s."""
        if prefix is None and origin is None:
            raise RouteError("a selector is needed: a prefix (the routes inside it) "
                             f"and/or origin {'|'.join(ROUTE_ORIGINS)}")
        if origin is not None and origin not in ROUTE_ORIGINS:
            raise RouteError(f"origin {origin[:64]!r} is not one of {', '.join(ROUTE_ORIGINS)}"
                             " (connected and local entries are never flushed)")
        net, plen = self._parse_prefix(prefix) if prefix is not None else (0, 0)
        mask = _MASKS[plen]
        keys = [k for k, r in self.static.items()
                if (origin is None or r.origin == origin)
                and k[1] >= plen and k[0] & mask == net]
        return [self._remove(key) for key in sorted(keys)]

    def _parse_prefix(self, value: str) -> tuple[int, int]:
        try:
            iface = parse_cidr(value, "prefix")
        except ConfigError as err:
            raise RouteError(str(err)) from None
        net = iface.network
        if iface.ip != net.network_address:
            raise RouteError(f"prefix: {value!r} has host bits set (the network is {net})")
        return int(net.network_address), net.prefixlen

    def load(self, text: str) -> dict[str, int]:
        """Replace (`ip route replace`) every route of `text`, one route per line in
        `fwd route add`'s words (blank lines and # comments skipped): all of them, or
        none (RouteError naming the first bad line). Returns how many were added,
        changed and unchanged: loading the same text twice changes nothing."""
        return self.apply_load(self.check_load(text))

    def check_load(self, text: str, first_line: int = 1,
                   seen: dict[tuple[int, int], int] | None = None) -> list[tuple[int, RouteConfig]]:
        """(line number, route) for every line of `text`, each validated, nothing applied
        (RouteError naming the first bad line). Lines are numbered from `first_line`;
        `seen` (prefix -> line) carries the earlier parts of a load sent in parts, so
        that a prefix given twice is caught across parts too."""
        seen = {} if seen is None else seen
        checked: list[tuple[int, RouteConfig]] = []
        for n, table in parse_route_lines(text, first_line):
            where = f"line {n}: "
            rc = self.validate(table, where)
            key = (rc.prefix, rc.prefix_len)
            if key in seen:
                raise RouteError(f"{where}{fmt_prefix(*key)} is already on line {seen[key]}")
            self._check_internal(key, where)
            seen[key] = n
            checked.append((n, rc))
        return checked

    def apply_load(self, checked: list[tuple[int, RouteConfig]]) -> dict[str, int]:
        """Replace the routes `check_load` passed: all of them, or none; count what was
        added, changed and unchanged. The FIB is only written for the first two (a
        route equal to the one there, from whatever origin, is left as it is)."""
        plans: list[tuple[int, Route, Route | None]] = []
        unchanged = 0
        for n, rc in checked:
            # checked again: a load sent in parts may meet an address added meanwhile
            self._check_internal((rc.prefix, rc.prefix_len), f"line {n}: ")
            route = self._route(rc, ORIGIN_CLI)
            old = self.static.get(route.key)
            if route.same_as(old):
                unchanged += 1
            else:
                plans.append((n, route, old))
        if len(plans) >= BULK_LOAD_MIN:
            try:  # all or nothing by bulk_load's contract
                self.fib.bulk_load([(r.prefix, r.prefix_len, r.nh) for _, r, _ in plans])
            except FibError as err:
                raise RouteError(f"{err}; nothing was applied") from None
        else:
            try:  # one FibWriter.apply: the compiled kernels add the whole load in one call
                self.fib.apply([(r.prefix, r.prefix_len, r.nh) for _, r, _ in plans])
            except FibError as err:  # Tbl8Exhausted part way: undo the ones before
                done = err.applied  # type: ignore[attr-defined]
                # undoing needs no tbl8 group (a delete, or the old next hop back in the
                # entry it had): cannot fail
                self.fib.apply([(r.prefix, r.prefix_len, 0 if was is None else was.nh)
                                for _, r, was in reversed(plans[:done])])
                raise RouteError(f"line {plans[done][0]}: {err}; nothing was applied") from None
        for _, route, _ in plans:
            self.static[route.key] = route
        added = sum(1 for _, _, old in plans if old is None)
        return {"added": added, "changed": len(plans) - added, "unchanged": unchanged}

    # ------------------------------------------------------------------ reading

    def show(self, internal: bool = False) -> list[dict[str, Any]]:
        """Config, added and connected routes (all internal entries with `internal`),
        sorted by prefix then length."""
        rows = [(r.key, r.as_dict(shadowed=r.key in self.internal))
                for r in self.static.values()]
        for r in self.internal_all:
            if internal or r.origin == ORIGIN_CONNECTED:
                rows.append((r.key, r.as_dict()))
        rows.sort(key=lambda kr: kr[0])
        return [row for _, row in rows]

    def lookup(self, addr: str) -> dict[str, Any]:
        """What the FIB answers for one address: the matching route and its next hop
        (a debugging aid; the fast path does the same lookup on a whole batch)."""
        try:
            a = int(ipaddress.IPv4Address(addr))
        except ValueError:
            raise RouteError(f"addr: {addr!r} is not an IPv4 address") from None
        nh = int(self.fib.lookup_one(a))
        route = None
        for plen in range(32, -1, -1):
            key = (a & _MASKS[plen], plen)
            if key in self.fib:
                r = self.internal.get(key) or self.static.get(key)
                route = r.as_dict() if r is not None else {"prefix": fmt_prefix(*key)}
                break
        return {"addr": str(ipaddress.IPv4Address(a)), "route": route,
                "nexthop": self.nexthop(nh)}

    def nexthop(self, i: int) -> dict[str, Any]:
        m = self.mem
        t = int(m.nh_type[i])
        flags = int(m.nh_flags[i])
        port = int(m.nh_port[i])
        resolved = bool(flags & NHF_RESOLVED)
        return {
            "index": i,
            "type": NH_TYPE_NAMES.get(t, str(t)),
            "port": self.port_names[port] if t in (NH_UNICAST, NH_LOCAL, NH_BROADCAST)
            else None,
            "gateway": _ip(int(m.nh_gw[i])) if flags & NHF_GATEWAY else None,
            "mac": bytes(m.nh_mac[i, :6]).hex(":") if resolved else None,
            "resolved": resolved,
            "mtu": int(m.nh_mtu[i]),
        }

    # ------------------------------------------------------------------ ports

    def port_index(self, name: str) -> int:
        try:
            return self.port_names.index(name)
        except ValueError:
            raise RouteError(f"no port named {name!r} (ports: "
                             f"{', '.join(self.port_names)})") from None

    def port_up(self, p: int) -> bool:
        return self.nhs.port_up(p)

    def set_port(self, name: str, up: bool) -> bool:
        """Take a port up or down; returns whether its state changed.

        Down: the port's bit goes out of the mask the fast path reads (non-plain
        packets to it drop as `port_down`) and its next hops' nh_mtu becomes 0 (so no
        plain packet goes out there either), then the NH generation moves on so that
        every worker flushes what it caches before its next batch. Up restores both."""
        p = self.port_index(name)
        mask = int(self.mem.ctl[CTL_PORT_UP])
        new = mask | (1 << p) if up else mask & ~(1 << p)
        if new == mask:
            return False
        self.mem.ctl[CTL_PORT_UP] = new
        self.nhs.set_port_mtu(p)
        self.mem.ctl[CTL_NH_GEN] += 1
        return True

    def set_mtu(self, name: str, mtu: int) -> int:
        """Give port `name` a new MTU at run time (`ip link set NAME mtu N`); returns
        the old one. The port's MTU word is what the fast path's MTU check (route
        stage, too-big tier) and the slow path (fragmentation, the MTU an ICMP
        frag-needed carries) read, both straight from shared memory; the plain tier
        compares against each next hop's `nh_mtu`, rewritten here; then the NH
        generation moves on so that every worker drops what it cached before its
        next batch, as a port going down does."""
        p = self.port_index(name)
        if not MIN_MTU <= mtu <= MAX_MTU:
            raise RouteError(f"mtu {mtu} is out of range {MIN_MTU}..{MAX_MTU}")
        if self.cfg.ports[p].driver == "dpdk":
            raise RouteError(f"port {name}: a dpdk device's MTU is set when the engine "
                             "starts; change [[port]] mtu and restart")
        old = int(self.mem.port_mtu[p])
        if old == mtu:
            return old
        self.mem.port_mtu[p] = mtu
        self.nhs.set_port_mtu(p)
        self.mem.ctl[CTL_NH_GEN] += 1
        return old

    def ports(self) -> dict[str, dict[str, Any]]:
        return {name: {"up": self.port_up(p), "mtu": int(self.mem.port_mtu[p]),
                       "mac": bytes(self.mem.port_mac[p, :6]).hex(":")}
                for p, name in enumerate(self.port_names)}


def parse_route_lines(text: str, first_line: int = 1) -> list[tuple[int, dict[str, Any]]]:
    """(line number, [[route]]-like table) for every route line of `text`, each in
    `fwd route add`'s words (engine/control/routespec.py: `[TYPE] PREFIX [via GW]
    [dev P] [metric N] [nexthop via GW [dev P]]...`; the older `port P` and `type T`
    too). Lines are `str.splitlines`' lines, numbered from `first_line`."""
    out = []
    for n, raw in enumerate(text.splitlines(), first_line):
        words = raw.split("#", 1)[0].split()
        if not words:
            continue
        try:
            out.append((n, parse_route_words(words)))
        except RouteWordsError as err:
            raise RouteError(f"line {n}: {err}") from None
    return out


def build_routing(cfg: Config, mem: EngineMemory, fib: FibWriter) -> Routing:
    """Fill the next-hop table and the FIB from the config (all ports up)."""
    routing = Routing(cfg, mem, fib)
    routing.build()
    return routing


def _port_of(cfg: Config, gw: int) -> str:
    for port in cfg.ports:
        for a in port.addresses:
            net = ipaddress.IPv4Network((a.address, a.prefix_len), strict=False)
            if ipaddress.IPv4Address(gw) in net:
                return port.name
    raise ValueError(f"gateway {ipaddress.IPv4Address(gw)} is not on any port's subnet")
