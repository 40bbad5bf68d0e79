"""`fwd trace N`: what happens to the next N packets, stage by stage (VPP's packet trace).

The control process arms a request (`arm`: N, an optional ingress port) in shared
memory (engine/shm/trace_capture.py); a forwarding worker sees it through the one shared
word it loads per batch, and `Tracer` does the rest, for that batch only:

- before the fast path, it picks the first packets of the batch still wanted (on the
  port asked for) and copies their header rows as received;
- after the batch is handed on, it runs the fast path's stages (`STAGES`) again on
  those copies alone (pure functions of the header and the tables, so they decide
  what they decided in the batch) and each stage records what it found (its
  `Stage.record`: the parsed header, the next hop, the neighbour), with the verdict
  code and tier after it; then the rewritten header and the final verdict of the
  batch itself (a full ring is decided after the stages);
- it writes one fixed-size record per packet into its own rows of `trace.rec` and
  publishes the count.

The control process collects every agent's records (`collect`), oldest first, and
disarms once N are in. `format_trace` prints them like VPP's `show trace`: one block
per packet, one line per stage. Off, it costs nothing but that word's load.
"""

from __future__ import annotations

import ipaddress
import time
from typing import Any

import numpy as np

from engine.counters import Drop, Slow
from engine.pipeline.fastpath import run_stages
from engine.pipeline.stage import Batch, Stage
from engine.pipeline.tables import Tables
from engine.pipeline.verdict import (
    FORWARD,
    PACKET_BROADCAST,
    PACKET_HOST,
    PACKET_MULTICAST,
    PACKET_OTHERHOST,
    SLOW,
)
from engine.shm.memory import (
    NH_BLACKHOLE,
    NH_BROADCAST,
    NH_LOCAL,
    NH_NOROUTE,
    NH_PROHIBIT,
    NH_UNICAST,
    NH_UNREACHABLE,
    NHF_GATEWAY,
    NHF_RESOLVED,
    EngineMemory,
)
from engine.shm.trace_capture import (
    OBS_ACTIVE,
    OBS_TRACE,
    OUT_BYTES,
    TRACE_GEN,
    TRACE_PORT,
    TRACE_RECORD,
    TRACE_SLOTS,
    TRACE_WANT,
)

MAX_TRACE = TRACE_SLOTS


class TraceError(ValueError):
    """A trace request that cannot be armed (the message says why)."""


# --------------------------------------------------------------------------- worker


class Tracer:
    """One agent's side of tracing: `begin` before the fast path, `finish` after."""

    def __init__(self, mem: EngineMemory, agent: int) -> None:
        self.mem = mem
        self.agent = agent
        self.gen = -1
        self.done = 0  # records written for `gen`

    def begin(self, idx: np.ndarray, hdr: np.ndarray) -> tuple | None:
        """The rows of this batch to trace, with copies of what finish needs."""
        ctl = self.mem.obs_ctl
        gen = int(ctl[TRACE_GEN])
        if gen != self.gen:
            self.gen, self.done = gen, 0
            self.mem.trace_count[self.agent, :2] = (0, gen)
        room = min(int(ctl[TRACE_WANT]), TRACE_SLOTS) - self.done
        if room <= 0:
            return None
        port = int(ctl[TRACE_PORT])
        mem = self.mem
        in_port = mem.port[idx]
        rows = np.arange(len(idx)) if not port else np.flatnonzero(in_port == port - 1)
        rows = rows[:room]
        if not len(rows):
            return None
        sel = idx[rows]
        return (rows, hdr[rows].copy(), mem.length[sel].copy(), in_port[rows].copy(),
                mem.ts[sel].copy(), mem.seq[sel].copy())

    def finish(self, picked: tuple, hdr_out: np.ndarray, code: np.ndarray,
               frame_len: np.ndarray, t: Tables) -> None:
        """Re-run the stages on the copies and write one record per packet; `hdr_out`,
        `code` and `frame_len` are the whole batch's after it was handed on."""
        rows, hdr_in, length, in_port, ts, seq = picked
        n = len(rows)
        rec = np.zeros(n, dtype=TRACE_RECORD)
        rec["gen"] = self.gen
        rec["clock"] = time.monotonic_ns()
        rec["ts"], rec["seq"], rec["agent"] = ts, seq, self.agent
        rec["in_port"], rec["length"] = in_port, length
        rec["hdr_in"] = hdr_in

        def record(stage: Stage, b: Batch) -> None:
            rec[stage.code_field], rec[stage.plain_field] = b.code, b.h.plain
            for name, value in stage.record(b, t).items():
                rec[name] = value

        b = Batch(hdr_in.copy(), length, in_port, np.zeros(n, dtype=np.uint8))
        run_stages(b, t, after=record)
        rec["final_code"] = code[rows]
        rec["frame_len"] = frame_len[rows]
        rec["hdr_out"] = hdr_out[rows, :OUT_BYTES]
        start = self.done
        self.mem.trace_rec[self.agent, start : start + n] = rec
        self.done += n
        # the records are written before the count that publishes them (x86 TSO)
        self.mem.trace_count[self.agent, 0] = self.done


# --------------------------------------------------------------------------- control


def arm(mem: EngineMemory, count: int, port: int | None) -> int:
    """Ask the workers to trace the next `count` packets (received on `port` when
    given); returns the request's generation."""
    if not 1 <= count <= MAX_TRACE:
        raise TraceError(f"trace: count must be between 1 and {MAX_TRACE}, got {count}")
    ctl = mem.obs_ctl
    ctl[OBS_ACTIVE] &= ~np.uint64(OBS_TRACE)
    ctl[TRACE_WANT] = count
    ctl[TRACE_PORT] = 0 if port is None else port + 1
    ctl[TRACE_GEN] += 1
    ctl[OBS_ACTIVE] |= np.uint64(OBS_TRACE)  # last: the parameters are in place
    return int(ctl[TRACE_GEN])


def disarm(mem: EngineMemory) -> None:
    mem.obs_ctl[OBS_ACTIVE] &= ~np.uint64(OBS_TRACE)


def collect(mem: EngineMemory, gen: int) -> np.ndarray:
    """The records of request `gen` every agent has published, oldest first, at most
    the count asked for; disarms the request once it has them all."""
    parts = []
    for agent in range(mem.geometry.nagents):
        n, agent_gen = (int(v) for v in mem.trace_count[agent, :2])
        if agent_gen == gen and n:
            part = mem.trace_rec[agent, :n].copy()
            parts.append(part[part["gen"] == gen])
    want = int(mem.obs_ctl[TRACE_WANT])
    if not parts:
        return np.zeros(0, dtype=TRACE_RECORD)
    rec = np.concatenate(parts)
    rec = rec[np.lexsort((rec["seq"], rec["clock"]))][:want]
    if len(rec) >= want and int(mem.obs_ctl[TRACE_GEN]) == gen:
        disarm(mem)
    return rec


def to_dicts(rec: np.ndarray) -> list[dict[str, Any]]:
    """Records as plain maps (msgpack-able): arrays of bytes become bytes."""
    out = []
    for r in rec:  # a few records for a person to read
        d: dict[str, Any] = {}
        for name in TRACE_RECORD.names:
            v = r[name]
            d[name] = v.tobytes() if isinstance(v, np.ndarray) else int(v)
        out.append(d)
    return out


# --------------------------------------------------------------------------- printing


def code_name(code: int) -> str:
    """A verdict code as a person reads it."""
    if code == FORWARD:
        return "forward"
    if code >= SLOW:
        return f"slow path ({Slow(code - SLOW).name})"
    return f"drop ({Drop(code).name})"


_PKT_TYPE = {PACKET_HOST: "host", PACKET_BROADCAST: "broadcast",
             PACKET_MULTICAST: "multicast", PACKET_OTHERHOST: "otherhost"}
_NH_TYPE = {NH_NOROUTE: "no route", NH_UNICAST: "unicast", NH_LOCAL: "local",
            NH_BROADCAST: "broadcast", NH_BLACKHOLE: "blackhole",
            NH_UNREACHABLE: "unreachable", NH_PROHIBIT: "prohibit"}
_PROTO = {1: "icmp", 6: "tcp", 17: "udp", 47: "gre", 50: "esp"}


def _ip(v: int) -> str:
    return str(ipaddress.IPv4Address(v))


def _mac(b: bytes) -> str:
    return ":".join(f"{x:02x}" for x in b)


def _mac48(v: int) -> str:
    return _mac(int(v).to_bytes(8, "little")[:6])


def _port(names: list[str], p: int) -> str:
    return names[p] if 0 <= p < len(names) else f"#{p}"


def format_record(r: dict[str, Any], number: int, port_names: list[str]) -> str:
    """One packet's block: a header line, then one line per stage it went through."""
    hdr = r["hdr_in"]
    agent = r["agent"]
    lines = [f"Packet {number}: worker{agent - 1} port {_port(port_names, r['in_port'])}, "
             f"{r['length']} bytes" + (f", seq {r['seq']}" if r["seq"] else "")]
    ether = int.from_bytes(hdr[12:14], "big")
    lines.append(f"  ethernet: {_mac(hdr[6:12])} > {_mac(hdr[0:6])} type 0x{ether:04x} "
                 f"({_PKT_TYPE.get(r['pkt_type'], r['pkt_type'])})")
    ihl = r["ihl"]
    rcv = r["rcv_code"]
    if ether == 0x0800 and len(hdr) >= 34:
        ident = int.from_bytes(hdr[18:20], "big")
        csum = int.from_bytes(hdr[24:26], "big")
        frag = r["frag_off"]
        flags = "".join(f for f, bit in (("DF", 0x4000), ("MF", 0x2000)) if frag & bit)
        proto = _PROTO.get(r["protocol"], str(r["protocol"]))
        lines.append(
            f"  ipv4: {_ip(r['saddr'])} > {_ip(r['daddr'])} {proto} version {hdr[14] >> 4} "
            f"ihl {ihl} tos 0x{hdr[15]:02x} tot_len {r['tot_len']} id 0x{ident:04x} "
            f"frag_off 0x{frag:04x}{' ' + flags if flags else ''} ttl {r['ttl']} "
            f"checksum 0x{csum:04x}")
    if rcv:
        lines.append(f"  ip_rcv: {code_name(rcv)}")
        return _finish(lines, r, port_names)
    tier = "whole-batch test" if r["rcv_plain"] else "checks one by one"
    lines.append(f"  ip_rcv: passed ({tier}): for us at L2, IPv4, version 4, ihl {ihl}, "
                 f"checksum ok, tot_len {r['tot_len']} within {r['length'] - 14} bytes of IP")
    route = r["route_code"]
    nh_line = (f"next hop {r['nh']} {_NH_TYPE.get(r['nh_type'], r['nh_type'])}")
    if r["nh_type"] == NH_UNICAST:
        if r["nh_flags"] & NHF_GATEWAY:
            nh_line += f" via {_ip(r['gateway'])}"
        nh_line += f" dev {_port(port_names, r['egress'])}"
        if r["nh_mtu"]:
            nh_line += f" mtu {r['nh_mtu']}"
    if r["ecmp_members"]:
        nh_line += f" (ECMP: one of {r['ecmp_members']}, by flow hash)"
    lines.append(f"  ip_route_input: fib lookup {_ip(r['daddr'])}: {nh_line}")
    if route:
        lines.append(f"  ip_route_input: {code_name(route)}")
        return _finish(lines, r, port_names)
    lines.append("  ip_route_input: passed: no martian source or destination, "
                 + ("not a fragment to reassemble, unicast route"
                    if r["route_plain"] else "unicast route (checks one by one)"))
    fwd = r["forward_code"]
    if fwd:
        lines.append(f"  ip_forward: ttl {r['ttl']}, tot_len {r['tot_len']}: {code_name(fwd)}")
        return _finish(lines, r, port_names)
    lines.append(f"  ip_forward: passed: ttl {r['ttl']} > 1, tot_len {r['tot_len']} fits the "
                 f"mtu, egress {_port(port_names, r['egress'])} is not the ingress port")
    how = "static neighbour" if r["nh_flags"] & NHF_RESOLVED else "neighbour table"
    lines.append(f"  neigh_output: {_ip(r['neighbour'])} is at {_mac48(r['mac'])} ({how})")
    out = r["hdr_out"]
    if r["final_code"] == FORWARD and len(out) >= 26:
        csum = int.from_bytes(out[24:26], "big")
        lines.append(f"  rewrite: {_mac(out[6:12])} > {_mac(out[0:6])} ttl {out[22]} "
                     f"checksum 0x{csum:04x} (RFC 1624)")
    return _finish(lines, r, port_names)


def _finish(lines: list[str], r: dict[str, Any], port_names: list[str]) -> str:
    final = r["final_code"]
    if final == FORWARD:
        verdict = f"forward on {_port(port_names, r['egress'])}, {r['frame_len']} bytes"
    else:
        verdict = code_name(final)
        decided = r["forward_code"] or r["route_code"] or r["rcv_code"]
        if final != decided:
            verdict += " when handed on"
    lines.append(f"  verdict: {verdict}")
    return "\n".join(lines)


def format_trace(records: list[dict[str, Any]], port_names: list[str]) -> str:
    return "\n\n".join(format_record(r, i + 1, port_names) for i, r in enumerate(records))
