"""`fwd stats --watch`: a live view of a running engine, refreshed every interval.

Rates come from two `stats` replies and the time between them: per port packets/s
and bits/s (frame bytes, as the port counters count them), per agent the share of
the interval it spent on non-empty batches (busy) and how full its batches were
(frames taken / (batches * batch size)), free pool buffers, drop reasons with their
rates, the non-zero `/proc/net/snmp`-named counters, the accounting check, and last
the rings that hold frames.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from rich.console import Console, Group
from rich.table import Table
from rich.text import Text

Stats = dict[str, Any]


def port_rates(prev: Stats, cur: Stats, dt: float) -> dict[str, dict[str, float]]:
    """Per port: rx/tx packets/s and bits/s, rx/tx drops/s."""
    out = {}
    for name, c in cur["ports"].items():
        p = prev["ports"].get(name, c)
        d = {k: c[k] - p[k] for k in c}
        out[name] = {
            "rx_pps": d["rx_packets"] / dt, "rx_bps": d["rx_bytes"] * 8 / dt,
            "tx_pps": d["tx_packets"] / dt, "tx_bps": d["tx_bytes"] * 8 / dt,
            "rx_drops_ps": d["rx_drops"] / dt, "tx_drops_ps": d["tx_drops"] / dt,
        }
    return out


def agent_rates(prev: Stats, cur: Stats, dt: float, batch: int) -> dict[str, dict[str, float]]:
    """Per agent: busy share (0..1) of the interval, batch fill (0..1), frames/s."""
    before = {r["agent"]: r for r in prev.get("workers", [])}
    out = {}
    for r in cur.get("workers", []):
        p = before.get(r["agent"], r)
        frames = r["rx_frames"] - p["rx_frames"]
        batches = r["batches"] - p["batches"]
        out[r["agent"]] = {
            "busy": (r["busy_ns"] - p["busy_ns"]) / (dt * 1e9),
            "fill": frames / (batches * batch) if batches and batch else 0.0,
            "rx_fps": frames / dt,
            "free_buffers": r["free_buffers"],
        }
    return out


def reason_rates(prev: dict[str, int], cur: dict[str, int], dt: float) -> dict[str, float]:
    return {k: (v - prev.get(k, 0)) / dt for k, v in cur.items()}


def si(value: float, unit: str = "") -> str:
    """1234567 -> '1.23 M' (people read rates this way)."""
    for factor, prefix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= factor:
            return f"{value / factor:.2f} {prefix}{unit}"
    return f"{value:.0f} {unit}".rstrip()


def accounting_line(acc: dict[str, int]) -> str:
    """The accounting check as a person reads it while traffic flows: frames handed to
    the slow path and not yet taken sit on its rings (in flight, not lost)."""
    fast = acc["received"] - (acc["forwarded"] + acc["delivered"] + acc["dropped"]
                              + acc["to_slowpath"])
    queued = acc["to_slowpath"] - acc["slow_taken"]
    slow = acc["slow_taken"] + acc["slow_reassembled"] - (
        acc["slow_forwarded"] + acc["slow_delivered"] + acc["slow_dropped"]
        + acc["slow_held"] + acc["slow_merged"])
    if fast == 0 and slow == 0 and queued >= 0:
        return "accounting: balanced" + (f" ({queued} on the slow path's rings)"
                                         if queued else "")
    # the counters of a batch are written one after the other: a read between two can
    # be off for a moment; a difference that stays is a frame lost
    return (f"accounting: off by {fast} (fast path), {slow} (slow path), {queued} queued"
            " (a read between two updates, if it does not stay)")


def render(prev: Stats, cur: Stats, dt: float) -> Group:
    """The view of one interval: rates first, then what went wrong, then the rings
    that hold anything (an 80x24 terminal shows the part that matters)."""
    batch = int(cur.get("batch", 0))
    ports = Table(title=f"ports (over {dt:.2f} s)", title_justify="left")
    for col in ("port", "state", "rx pkt/s", "rx bit/s", "tx pkt/s", "tx bit/s", "drop/s"):
        ports.add_column(col, justify="left" if col in ("port", "state") else "right",
                         no_wrap=True)
    state = cur.get("port_state", {})
    totals = []
    for name, r in port_rates(prev, cur, dt).items():
        c = cur["ports"][name]
        up = state.get(name, {}).get("up", True)
        ports.add_row(name, "up" if up else "DOWN", si(r["rx_pps"]), si(r["rx_bps"]),
                      si(r["tx_pps"]), si(r["tx_bps"]),
                      si(r["rx_drops_ps"] + r["tx_drops_ps"]))
        totals.append(f"{name} totals: rx {si(c['rx_packets'])} tx {si(c['tx_packets'])}, "
                      f"drops rx {si(c['rx_drops'])} tx {si(c['tx_drops'])}")
    agents = Table(title=f"workers (batch {batch or '?'})", title_justify="left")
    for col in ("agent", "busy %", "batch fill %", "frames/s", "free buffers"):
        agents.add_column(col, justify="left" if col == "agent" else "right", no_wrap=True)
    for name, r in agent_rates(prev, cur, dt, batch).items():
        agents.add_row(name, f"{100 * r['busy']:.1f}", f"{100 * r['fill']:.1f}",
                       si(r["rx_fps"]), str(r["free_buffers"]))
    lines = totals
    pool = cur.get("pool")
    if pool:
        lines.append(f"pool: {pool['free']} free of {pool['buffers']} buffers")
    for title, key in (("drops", "drop"), ("slow path drops", "slow_drop"),
                       ("to slow path", "slow")):
        counts = cur.get(key, {})
        rates = reason_rates(prev.get(key, {}), counts, dt)
        text = " ".join(f"{k}={v} ({si(rates[k])}/s)" for k, v in counts.items() if v)
        lines.append(f"{title}: {text or 'none'}")
    for title, key in (("Ip", "snmp"), ("Icmp", "icmp"), ("Udp", "udp"), ("Tcp", "tcp"),
                       ("Arp", "arp")):
        counts = {k: v for k, v in cur.get(key, {}).items() if v}
        if counts:
            lines.append(f"{title}: " + " ".join(f"{k}={v}" for k, v in counts.items()))
    acc = cur.get("accounting", {})
    if acc:
        lines.append(accounting_line(acc))
    all_rings = cur.get("rings", {})
    busy = {name: (used, size) for name, (used, size) in all_rings.items() if used}
    if busy:
        rings = Table(title=f"rings holding frames ({len(all_rings) - len(busy)} empty)",
                      title_justify="left")
        for col in ("ring", "used", "size", "fill %"):
            rings.add_column(col, justify="left" if col == "ring" else "right")
        for name, (used, size) in busy.items():
            rings.add_row(name, str(used), str(size), f"{100 * used / size:.1f}" if size else "-")
        return Group(ports, agents, Text("\n".join(lines)), rings)
    lines.append(f"rings: all {len(all_rings)} empty")
    return Group(ports, agents, Text("\n".join(lines)))


def watch(fetch: Callable[[], Stats], interval: float, count: int | None,
          console: Console) -> None:
    """Refresh every `interval` seconds, `count` times (None: until Ctrl-C). A terminal
    gets a live view redrawn in place; anything else gets each view printed in turn."""
    prev, t_prev = fetch(), time.monotonic()
    shown = 0

    def step() -> Group:
        nonlocal prev, t_prev, shown
        time.sleep(interval)
        cur, now = fetch(), time.monotonic()
        view = render(prev, cur, max(now - t_prev, 1e-9))
        prev, t_prev = cur, now
        shown += 1
        return view

    try:
        if console.is_terminal:
            from rich.live import Live

            with Live(console=console, auto_refresh=False) as live:
                while count is None or shown < count:
                    live.update(step(), refresh=True)
        else:
            while count is None or shown < count:
                console.print(step())
    except KeyboardInterrupt:
        pass
