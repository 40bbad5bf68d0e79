"""`fwd trace`'s text: the records the control process collected, as VPP's `show trace`.

One block per packet: a header line, then each stage's lines in the fast path's
order (`STAGES`, every stage printing its own), up to the stage that decided the
packet's fate, then the verdict of the batch itself.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from typing import Any

from engine.counters import Drop, Slow
from engine.pipeline.fastpath import STAGES
from engine.pipeline.verdict import (
    FORWARD,
    PACKET_BROADCAST,
    PACKET_HOST,
    PACKET_MULTICAST,
    PACKET_OTHERHOST,
    SLOW,
)
from engine.shm.memory import NH_NOROUTE, NH_TYPE_NAMES

PKT_TYPE_NAMES = {PACKET_HOST: "host", PACKET_BROADCAST: "broadcast",
                  PACKET_MULTICAST: "multicast", PACKET_OTHERHOST: "otherhost"}
NH_TYPE_TEXT = {**NH_TYPE_NAMES, NH_NOROUTE: "no route"}  # a trace is read, not parsed
PROTO_NAMES = {1: "icmp", 6: "tcp", 17: "udp", 47: "gre", 50: "esp"}


def code_name(code: int) -> str:
    """A verdict code as a person reads it."""
    if code == FORWARD:
        return "forward"
    if code >= SLOW:
        return f"slow path ({Slow(code - SLOW).name})"
    return f"drop ({Drop(code).name})"


def mac_text(raw: bytes) -> str:
    return ":".join(f"{x:02x}" for x in raw)


class Text:
    """The stages' `TraceText` (engine/pipeline/stage.py): values as a person reads
    them, ports by the names the control process sent along with the records."""

    def __init__(self, port_names: list[str]) -> None:
        self.port_names = port_names

    def code(self, code: int) -> str:
        return code_name(code)

    def ip(self, addr: int) -> str:
        return str(ipaddress.IPv4Address(addr))

    def mac(self, raw: bytes) -> str:
        return mac_text(raw)

    def mac48(self, key: int) -> str:
        return mac_text(int(key).to_bytes(8, "little")[:6])

    def port(self, port: int) -> str:
        names = self.port_names
        return names[port] if 0 <= port < len(names) else f"#{port}"

    def pkt_type(self, pkt_type: int) -> str:
        return PKT_TYPE_NAMES.get(pkt_type, str(pkt_type))

    def nh_type(self, nh_type: int) -> str:
        return NH_TYPE_TEXT.get(nh_type, str(nh_type))

    def proto(self, protocol: int) -> str:
        return PROTO_NAMES.get(protocol, str(protocol))


def format_record(r: Mapping[str, Any], number: int, port_names: list[str]) -> str:
    """One packet's block: a header line, then the lines of every stage it went
    through, then the verdict."""
    text = Text(port_names)
    lines = [f"Packet {number}: worker{r['agent'] - 1} port {text.port(r['in_port'])}, "
             f"{r['length']} bytes" + (f", seq {r['seq']}" if r["seq"] else "")]
    decided = FORWARD
    for stage in STAGES:
        lines += [f"  {label or stage.name}: {line}" for label, line in stage.lines(r, text)]
        decided = r[stage.code_field]
        if decided != FORWARD:
            break
    final = r["final_code"]
    if final == FORWARD:
        verdict = f"forward on {text.port(r['egress'])}, {r['frame_len']} bytes"
    else:
        verdict = code_name(final)
        if final != decided:
            verdict += " when handed on"
    lines.append(f"  verdict: {verdict}")
    return "\n".join(lines)


def format_trace(records: list[dict[str, Any]], port_names: list[str]) -> str:
    return "\n\n".join(format_record(r, i + 1, port_names) for i, r in enumerate(records))
