"""Shared memory of the operator's tools: `fwd trace` records and the `fwd capture` ring.

Both are off unless someone asks, and cost a forwarding worker one load of one shared
word per batch then (`obs.ctl[OBS_ACTIVE]`, zero when nobody observes). The control
process arms them (engine/observe/trace.py, engine/observe/capture.py): it writes the request's
parameters, bumps the request's generation, then sets the active bit; a worker that
sees the bit compares the generation with its own and starts over when it moved.

Trace: each agent writes up to `TRACE_SLOTS` fixed-size records (`TRACE_RECORD`) into
its own rows of `trace.rec` and then publishes how many it wrote in `trace.count`
(its one writer); the control process reads them, oldest first, and disarms once it
has the N packets asked for.

Capture: one single-producer/single-consumer ring of `CAPTURE_SLOTS` frame slots per
agent. The worker writes a frame's bytes and metadata, then advances `cap.head`; the
control process reads and advances `cap.tail` (as engine/shm/ring.py, x86 TSO keeps
the stores in order). A full ring never blocks forwarding: the frame is counted in
`cap.lost` and not captured.
"""

from __future__ import annotations

import numpy as np

from engine.proto import HDR_BYTES
from engine.shm.layout import Field

# obs.ctl words
OBS_ACTIVE = 0  # bit mask: what the workers must do this batch (0: nothing)
TRACE_GEN = 1  # bumped by every `trace.start`
TRACE_WANT = 2  # packets to trace per request (each agent records at most this many)
TRACE_PORT = 3  # ingress port + 1; 0: any port
CAP_GEN = 4  # bumped by every `capture.start`
CAP_PORT = 5  # port + 1; 0: any port
CAP_AT = 6  # CAP_RX, CAP_TX or CAP_DROP

OBS_TRACE = 1
OBS_CAPTURE = 2

CAP_RX, CAP_TX, CAP_DROP = 1, 2, 3
CAPTURE_POINTS = {"rx": CAP_RX, "tx": CAP_TX, "drop": CAP_DROP}

TRACE_SLOTS = 1024  # records per agent and request: `fwd trace N` takes N <= this
CAPTURE_SLOTS = 512  # frames per agent ring
OUT_BYTES = 34  # the rewritten Ethernet and fixed IPv4 header of a forwarded packet

# One traced packet: what it was, what each stage decided, what it became.
TRACE_RECORD = np.dtype([
    ("gen", "<u8"),  # the request it answers (TRACE_GEN)
    ("clock", "<i8"),  # time.monotonic_ns() when recorded: orders records of all agents
    ("ts", "<i8"),  # the frame's receive time (pool.ts)
    ("seq", "<u8"),  # arrival number (pool.seq; pcap ports)
    ("agent", "<u2"),
    ("in_port", "<u2"),
    ("length", "<u4"),  # frame length as received
    ("frame_len", "<u4"),  # after ip_rcv trims L2 padding to tot_len
    ("hdr_in", "u1", (HDR_BYTES,)),  # the first bytes as received
    ("hdr_out", "u1", (OUT_BYTES,)),  # as sent (forwarded packets)
    # ip_rcv's parse (engine/pipeline/rcv.py IpHeaders)
    ("pkt_type", "u1"),
    ("ihl", "u1"),
    ("tot_len", "<u4"),
    ("frag_off", "<u2"),
    ("ttl", "u1"),
    ("protocol", "u1"),
    ("saddr", "<u4"),
    ("daddr", "<u4"),
    # the verdict code after each stage (0: still forwarding), and whether the packet
    # was still on the plain (whole-batch) tier after it
    ("rcv_code", "u1"),
    ("route_code", "u1"),
    ("forward_code", "u1"),
    ("final_code", "u1"),  # what the worker finally did (a full ring included)
    ("rcv_plain", "u1"),
    ("route_plain", "u1"),
    ("forward_plain", "u1"),
    # route and next hop
    ("nh", "<u4"),
    ("nh_type", "u1"),
    ("nh_flags", "u1"),
    ("nh_mtu", "<u2"),
    ("egress", "<u2"),
    ("ecmp_members", "u1"),  # group size when the route was an ECMP group (0: not one)
    ("gateway", "<u4"),
    ("neighbour", "<u4"),  # the address resolved for the L2 header (rt_nexthop)
    ("mac", "<u8"),  # its MAC (mac48), where forwarded
], align=True)

CAPTURE_META = np.dtype([
    ("gen", "<u8"),
    ("ts", "<i8"),
    ("seq", "<u8"),
    ("length", "<u4"),  # frame length (the slot holds min(length, bufsize) bytes)
    ("port", "<u2"),  # ingress port (rx, drop) or egress port (tx)
    ("reason", "u1"),  # the verdict code of a dropped frame (a Drop reason)
    ("at", "u1"),
], align=True)


def observe_fields(nagents: int, bufsize: int) -> list[Field]:
    """The fields engine_layout declares for tracing and capture (counters are padded to
    a cache line per agent: each has one writer)."""
    u8 = np.dtype(np.uint64)
    return [
        Field("obs.ctl", u8, (8,)),
        Field("trace.count", u8, (nagents, 8)),  # [records, generation]
        Field("trace.rec", TRACE_RECORD, (nagents, TRACE_SLOTS)),
        Field("cap.head", u8, (nagents, 8)),  # [0]: written by the agent
        Field("cap.lost", u8, (nagents, 8)),  # [0]: frames a full ring refused
        Field("cap.tail", u8, (nagents, 8)),  # [0]: written by the control process
        Field("cap.meta", CAPTURE_META, (nagents, CAPTURE_SLOTS)),
        Field("cap.data", np.dtype(np.uint8), (nagents, CAPTURE_SLOTS, bufsize)),
    ]
