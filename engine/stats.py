"""Counters read out of shared memory: totals, per port, and the accounting check.

Every frame a port receives ends exactly once as forwarded, delivered, dropped
(with a reason) or handed to the slow path; what the slow path is handed ends as
forwarded, delivered, sent back out or dropped. `Snapshot.balanced` checks both.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from engine.counters import MISC_BASE, Misc, summarize
from engine.shm.memory import PORT_COUNTER_NAMES, EngineMemory


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

    @property
    def balanced(self) -> bool:
        fast = self.forwarded + self.delivered + self.dropped + self.to_slowpath
        slow = self.slow_forwarded + self.slow_delivered + self.slow_dropped
        return self.received == fast and self.to_slowpath == self.slow_taken == slow

    def as_dict(self) -> dict:
        return {
            "ports": self.ports,
            "snmp": self.snmp,
            "drop": {k: v for k, v in self.drop.items() if v},
            "slow": {k: v for k, v in self.slow.items() if v},
            "accounting": {
                "received": self.received,
                "forwarded": self.forwarded,
                "delivered": self.delivered,
                "dropped": self.dropped,
                "to_slowpath": self.to_slowpath,
                "balanced": self.balanced,
            },
        }


def snapshot(mem: EngineMemory, port_names: list[str]) -> Snapshot:
    g = mem.geometry
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
    )


def format_snapshot(s: Snapshot) -> str:
    """Counters as a person reads them: ports, Ip: counters, reasons, the balance."""
    lines = []
    width = max(len(n) for n in s.ports) if s.ports else 4
    lines.append(f"{'port':<{width}}  " + "  ".join(f"{c:>12}" for c in PORT_COUNTER_NAMES))
    for name, c in s.ports.items():
        lines.append(f"{name:<{width}}  " + "  ".join(f"{c[k]:>12}" for k in PORT_COUNTER_NAMES))
    lines.append("")
    lines.append("Ip: " + " ".join(f"{k}={v}" for k, v in s.snmp.items() if v))
    drops = {k: v for k, v in s.drop.items() if v}
    slows = {k: v for k, v in s.slow.items() if v}
    lines.append("drops: " + (" ".join(f"{k}={v}" for k, v in drops.items()) or "none"))
    lines.append("to slow path: " + (" ".join(f"{k}={v}" for k, v in slows.items()) or "none"))
    mark = "balanced" if s.balanced else "NOT BALANCED"
    lines.append(
        f"accounting: received {s.received} = forwarded {s.forwarded} + delivered "
        f"{s.delivered} + dropped {s.dropped} + slow path {s.to_slowpath} ({mark}); "
        f"slow path: taken {s.slow_taken} = forwarded {s.slow_forwarded} + delivered "
        f"{s.slow_delivered} + dropped {s.slow_dropped}"
    )
    return "\n".join(lines)
