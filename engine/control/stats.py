"""Counters read out of shared memory: totals, per port, and the accounting check.

Every frame a port receives ends exactly once as forwarded, delivered, dropped
(with a reason) or handed to the slow path:

    received == forwarded + delivered + dropped + to_slowpath

and the slow path takes everything it is handed (`to_slowpath == slow_taken`). There
every packet ends once as forwarded, delivered, dropped (a `Drop` or `SlowDrop`
reason), held (in a reassembly queue, or in a hold queue until its next hop's MAC
is known), or merged into a reassembled datagram (counted in fragments); each
reassembled datagram is a new packet that ends once in turn:

    slow_taken + slow_reassembled == slow_forwarded + slow_delivered + slow_dropped
                                     + slow_held + slow_merged

`Snapshot.balanced` checks all three. An ARP frame the slow path takes ends as
delivered (or dropped with a reason), though not to IP (no InDelivers). ICMP
messages and ARP frames the router originates are not received packets: they are
counted apart (Icmp: Out*, Tcp: OutRsts, Ip: OutRequests, Arp:, `unsent`).

`reassembly` is no count but levels (`counters.Reasm`): the queues and bytes the
reassembler holds now, the most it ever held (memory_high) and its thresholds.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from engine.counters import MISC_BASE, Misc, port_drops, summarize
from engine.shm.memory import (
    AGENT_IO,
    PORT_COUNTER_NAMES,
    ST_FREE,
    ST_IDLE,
    ST_LOOPS,
    ST_PID,
    EngineMemory,
)


@dataclass
class Snapshot:
    snmp: dict[str, int]
    drop: dict[str, int]
    slow: dict[str, int]
    ports: dict[str, dict[str, int]]
    received: int
    forwarded: int
    delivered: int
    dropped: int
    to_slowpath: int
    slow_taken: int
    slow_dropped: int
    slow_forwarded: int
    slow_delivered: int
    slow_reassembled: int = 0  # datagrams made from fragments
    slow_merged: int = 0  # fragments in them
    slow_held: int = 0  # fragments still queued
    slow_drop: dict[str, int] = field(default_factory=dict)  # SlowDrop reasons
    icmp: dict[str, int] = field(default_factory=dict)
    udp: dict[str, int] = field(default_factory=dict)
    tcp: dict[str, int] = field(default_factory=dict)
    unsent: dict[str, int] = field(default_factory=dict)  # originated, not sent
    arp: dict[str, int] = field(default_factory=dict)  # ARP and the neighbour table
    reassembly: dict[str, int] = field(default_factory=dict)  # memory levels (Reasm)
    # per port, the device's own counters (DPDK: rte_eth_stats_get, xstats as "x.NAME")
    devices: dict[str, dict[str, int]] = field(default_factory=dict)

    @property
    def fast_balanced(self) -> bool:
        return self.received == (self.forwarded + self.delivered + self.dropped
                                 + self.to_slowpath)

    @property
    def slow_balanced(self) -> bool:
        ends = (self.slow_forwarded + self.slow_delivered + self.slow_dropped
                + self.slow_held + self.slow_merged)
        return self.slow_taken + self.slow_reassembled == ends

    @property
    def balanced(self) -> bool:
        return (self.fast_balanced and self.to_slowpath == self.slow_taken
                and self.slow_balanced)

    def as_dict(self) -> dict:
        return {
            "ports": self.ports,
            "snmp": self.snmp,
            "drop": {k: v for k, v in self.drop.items() if v},
            "slow": {k: v for k, v in self.slow.items() if v},
            "slow_drop": {k: v for k, v in self.slow_drop.items() if v},
            "icmp": {k: v for k, v in self.icmp.items() if v},
            "udp": {k: v for k, v in self.udp.items() if v},
            "tcp": {k: v for k, v in self.tcp.items() if v},
            "unsent": {k: v for k, v in self.unsent.items() if v},
            "arp": {k: v for k, v in self.arp.items() if v},
            "reassembly": self.reassembly,  # levels: a 0 says something, all are kept
            **({"devices": self.devices} if self.devices else {}),
            "accounting": {
                "received": self.received,
                "forwarded": self.forwarded,
                "delivered": self.delivered,
                "dropped": self.dropped,
                "to_slowpath": self.to_slowpath,
                "slow_taken": self.slow_taken,
                "slow_forwarded": self.slow_forwarded,
                "slow_delivered": self.slow_delivered,
                "slow_dropped": self.slow_dropped,
                "slow_reassembled": self.slow_reassembled,
                "slow_merged": self.slow_merged,
                "slow_held": self.slow_held,
                "balanced": self.balanced,
            },
        }

    @classmethod
    def from_dict(cls, d: dict) -> Snapshot:
        """The inverse of `as_dict` (what a client gets over the control socket):
        counters `as_dict` left out because they were zero come back as 0."""
        acc = d["accounting"]
        return cls(
            snmp=dict(d["snmp"]),
            drop=dict(d.get("drop", {})),
            slow=dict(d.get("slow", {})),
            ports={k: dict(v) for k, v in d["ports"].items()},
            received=acc["received"],
            forwarded=acc["forwarded"],
            delivered=acc["delivered"],
            dropped=acc["dropped"],
            to_slowpath=acc["to_slowpath"],
            slow_taken=acc.get("slow_taken", 0),
            slow_forwarded=acc.get("slow_forwarded", 0),
            slow_delivered=acc.get("slow_delivered", 0),
            slow_dropped=acc.get("slow_dropped", 0),
            slow_reassembled=acc.get("slow_reassembled", 0),
            slow_merged=acc.get("slow_merged", 0),
            slow_held=acc.get("slow_held", 0),
            slow_drop=dict(d.get("slow_drop", {})),
            icmp=dict(d.get("icmp", {})),
            udp=dict(d.get("udp", {})),
            tcp=dict(d.get("tcp", {})),
            unsent=dict(d.get("unsent", {})),
            arp=dict(d.get("arp", {})),
            reassembly=dict(d.get("reassembly", {})),
            devices={k: dict(v) for k, v in d.get("devices", {}).items()},
        )


_DEVICE_STATS: dict[str, Callable[[], dict[str, dict[str, int]]]] = {}


def register_device_stats(mem: EngineMemory,
                          source: Callable[[], dict[str, dict[str, int]]]) -> Callable[[], None]:
    """Have every `snapshot` of this engine (its final one, `fwd stats`) carry the
    devices' own counters from `source` (DPDK ports: the primary reads them). Returns
    the function that undoes it."""
    name = mem.geometry.name
    _DEVICE_STATS[name] = source
    return lambda: _DEVICE_STATS.pop(name, None)  # type: ignore[func-returns-value]


def snapshot(mem: EngineMemory, port_names: list[str], *, devices: bool = True) -> Snapshot:
    """The counters now. `devices=False` leaves out the devices' own counters (asking
    DPDK for them is for the control process's main thread only: engine/control/metrics.py
    reads from another thread)."""
    g = mem.geometry
    source = _DEVICE_STATS.get(g.name) if devices else None
    device_counters = source() if source is not None else {}
    rows = mem.counters.copy()
    total = summarize(rows)
    fast_agents = np.r_[0, 1 : 1 + g.nworkers]  # the I/O agent's drops count as fast ones
    misc = rows[:, MISC_BASE : MISC_BASE + len(Misc)]
    slow = misc[g.slowpath_agent]
    per_port = mem.port_counters.sum(axis=0)
    ports = {name: {c: int(per_port[p, i]) for i, c in enumerate(PORT_COUNTER_NAMES)}
             for p, name in enumerate(port_names)}
    return Snapshot(
        snmp=total["snmp"],
        drop=total["drop"],
        slow=total["slow"],
        ports=ports,
        received=int(per_port[:, 0].sum()),
        forwarded=int(misc[fast_agents, Misc.forwarded].sum()),
        delivered=int(misc[fast_agents, Misc.delivered].sum()),
        dropped=int(misc[fast_agents, Misc.dropped].sum()),
        to_slowpath=int(misc[fast_agents, Misc.to_slowpath].sum()),
        slow_taken=int(slow[Misc.rx_frames]),
        slow_dropped=int(slow[Misc.dropped]),
        slow_forwarded=int(slow[Misc.forwarded]),
        slow_delivered=int(slow[Misc.delivered]),
        slow_reassembled=int(slow[Misc.reassembled]),
        slow_merged=int(slow[Misc.merged]),
        slow_held=int(slow[Misc.held]),
        slow_drop=total["slowdrop"],
        icmp=total["icmp"],
        udp=total["udp"],
        tcp=total["tcp"],
        unsent=total["unsent"],
        arp=total["arp"],
        reassembly=total["reasm"],
        devices=device_counters,
    )


def port_rows(mem: EngineMemory, cfg: Any, state: dict[str, dict[str, Any]]
              ) -> list[dict[str, Any]]:
    """One map per port for `fwd port show`: its config (driver, addresses), its state
    now (`state`: Routing.ports(): up, MTU, MAC), whether the link has carrier (what
    the driver can tell: an AF_PACKET interface's /sys carrier; None when unknown),
    the driver's counters, and the fast path's drops of frames it received, by
    reason (the counters row's per-port section)."""
    per_port = mem.port_counters.sum(axis=0)
    drops = port_drops(mem.counters.copy(), len(cfg.ports))
    rows = []
    for p, port in enumerate(cfg.ports):
        rows.append({
            "index": p,  # as ip link's ifindex: the port's place in the config
            "name": port.name,
            "driver": port.driver,
            **state[port.name],
            "carrier": _carrier(port.iface) if port.driver == "afpacket" else None,
            "addresses": [str(a) for a in port.addresses],
            "counters": {c: int(per_port[p, i]) for i, c in enumerate(PORT_COUNTER_NAMES)},
            "drops": drops[p],
        })
    return rows


def _carrier(iface: str | None) -> bool | None:
    """The kernel's carrier flag of `iface` (in the namespace we run in), or None."""
    try:
        with open(f"/sys/class/net/{iface}/carrier") as f:
            return f.read().strip() == "1"
    except (OSError, TypeError):  # down interfaces refuse the read (EINVAL)
        return None


def format_ports(rows: list[dict[str, Any]]) -> str:
    """`fwd port show` as text, shaped like `ip -s link` (and VPP's `show interface`):
    a line of state per port, its addresses, then RX and TX counters under their
    names, then the drops by reason."""
    out: list[str] = []
    for r in rows:
        flags = ["UP" if r["up"] else "DOWN"]
        if r["carrier"] is not None:
            flags.append("LOWER_UP" if r["carrier"] else "NO-CARRIER")
        c = r["counters"]
        out.append(f"{r['index']}: {r['name']}: <{','.join(flags)}> mtu {r['mtu']} state "
                   f"{'UP' if r['up'] else 'DOWN'} driver {r['driver']}")
        out.append(f"    link/ether {r['mac']}")
        out += [f"    inet {a}" for a in r["addresses"]]
        out.append(f"    {'RX:':<5}{'bytes':>14}{'packets':>12}{'dropped':>12}")
        out.append(f"    {'':<5}{c['rx_bytes']:>14}{c['rx_packets']:>12}"
                   f"{sum(r['drops'].values()) + c['rx_drops']:>12}")
        out.append(f"    {'TX:':<5}{'bytes':>14}{'packets':>12}{'dropped':>12}")
        out.append(f"    {'':<5}{c['tx_bytes']:>14}{c['tx_packets']:>12}{c['tx_drops']:>12}")
        reasons = dict(r["drops"])
        if c["rx_drops"]:
            reasons = {"driver_rx": c["rx_drops"], **reasons}
        out.append("    drops: " + (" ".join(f"{k}={v}" for k, v in reasons.items())
                                    or "none"))
    return "\n".join(out)


def format_snapshot(s: Snapshot) -> str:
    """Counters as a person reads them: ports, Ip: counters, reasons, the balance."""
    lines = []
    width = max(len(n) for n in s.ports) if s.ports else 4
    lines.append(f"{'port':<{width}}  " + "  ".join(f"{c:>12}" for c in PORT_COUNTER_NAMES))
    for name, c in s.ports.items():
        lines.append(f"{name:<{width}}  " + "  ".join(f"{c[k]:>12}" for k in PORT_COUNTER_NAMES))
    lines.append("")
    lines.append("Ip: " + _nonzero(s.snmp))
    if any(s.icmp.values()):
        lines.append("Icmp: " + _nonzero(s.icmp))
    if any(s.udp.values()):
        lines.append("Udp: " + _nonzero(s.udp))
    if any(s.tcp.values()):
        lines.append("Tcp: " + _nonzero(s.tcp))
    if any(s.arp.values()):
        lines.append("Arp: " + _nonzero(s.arp))
    if s.reassembly:
        r = s.reassembly
        lines.append(f"reassembly: {r['inuse']} queues, {r['memory']} bytes (high-water "
                     f"{r['memory_high']}; high_thresh {r['high_thresh']}, low_thresh "
                     f"{r['low_thresh']})")
    lines.append("drops: " + (_nonzero(s.drop) or "none"))
    lines.append("to slow path: " + (_nonzero(s.slow) or "none"))
    lines.append("slow path drops: " + (_nonzero(s.slow_drop) or "none"))
    if any(s.unsent.values()):
        lines.append("not sent (router's own): " + _nonzero(s.unsent))
    if s.devices:
        lines.append("device counters (the drivers' own):")
        for name, c in s.devices.items():
            basic = {k: v for k, v in c.items() if not k.startswith("x.")}
            lines.append(f"  {name}: " + (" ".join(f"{k}={v}" for k, v in basic.items())))
    mark = "balanced" if s.balanced else "NOT BALANCED"
    lines.append(
        f"accounting: received {s.received} = forwarded {s.forwarded} + delivered "
        f"{s.delivered} + dropped {s.dropped} + slow path {s.to_slowpath} ({mark}); "
        f"slow path: taken {s.slow_taken} + reassembled {s.slow_reassembled} = forwarded "
        f"{s.slow_forwarded} + delivered {s.slow_delivered} + dropped {s.slow_dropped} "
        f"+ held {s.slow_held} + merged {s.slow_merged}"
    )
    return "\n".join(lines)


def _nonzero(counters: dict[str, int]) -> str:
    return " ".join(f"{k}={v}" for k, v in counters.items() if v)


AGENT_COLUMNS = ("rx_frames", "forwarded", "delivered", "dropped", "to_slowpath",
                 "tx_frames", "batches", "busy_ns")


def agent_name(mem: EngineMemory, agent: int) -> str:
    g = mem.geometry
    if agent == AGENT_IO:
        return "io"
    if agent == g.slowpath_agent:
        return "slowpath"
    return f"worker{agent - 1}"


def agent_rows(mem: EngineMemory) -> list[dict[str, int | str | bool]]:
    """One row per agent (the I/O agent, each forwarding worker, the slow path): its
    pid, liveness (loop passes, idle), what it handled, and its free buffers.

    Read while the agents run: each value is current, but the rows are not one
    consistent cut (a frame can be counted by one agent and not yet by the next)."""
    rows: list[dict[str, int | str | bool]] = []
    counters = mem.counters.copy()
    state = mem.state.copy()
    for agent in range(mem.geometry.nagents):
        row: dict[str, int | str | bool] = {
            "agent": agent_name(mem, agent),
            "pid": int(state[agent, ST_PID]),
            "loops": int(state[agent, ST_LOOPS]),
            "idle": bool(state[agent, ST_IDLE]),
            "free_buffers": int(state[agent, ST_FREE]),
        }
        for c in AGENT_COLUMNS:
            row[c] = int(counters[agent, MISC_BASE + Misc[c]])
        busy, batches = int(row["busy_ns"]), int(row["batches"])
        row["avg_batch_us"] = round(busy / batches / 1000, 1) if batches else 0
        rows.append(row)
    return rows


def format_agents(rows: list[dict]) -> str:
    """Per-agent rows as a table."""
    cols = ("agent", "pid", "loops", "rx_frames", "forwarded", "dropped", "to_slowpath",
            "tx_frames", "batches", "free_buffers")
    widths = [max(len(c), *(len(str(r.get(c, ""))) for r in rows)) for c in cols]
    lines = ["  ".join(f"{c:>{w}}" for c, w in zip(cols, widths, strict=True))]
    for r in rows:
        lines.append("  ".join(f"{str(r.get(c, '')):>{w}}"
                               for c, w in zip(cols, widths, strict=True)))
    return "\n".join(lines)
