"""What a fast-path stage declares, and the batch state the stages pass along.

Each stage module (rcv.py, route.py, forward.py) declares one `Stage` beside its
function, the way a VPP graph node carries its name and error counters: the kernel
function it mirrors, the verdicts it can decide, one call over a `Batch`, and what it
records and prints for `fwd trace`. fastpath.py lists them in order (`STAGES`); the
fast path and `fwd trace` both run that list.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from engine.pipeline.tables import Tables

if TYPE_CHECKING:  # rcv.py declares a Stage itself
    from engine.pipeline.rcv import IpHeaders


@dataclass(slots=True)
class Batch:
    """One batch on its way through the stages: the input, the verdict codes, and what
    each stage found for the next ones (set by the stage that finds it)."""

    hdr: np.ndarray  # (N, HDR_BYTES) header rows, rewritten in place when forwarded
    length: np.ndarray  # (N,) frame lengths
    in_port: np.ndarray  # (N,) ingress ports
    code: np.ndarray  # (N,) uint8 verdict codes (see verdict.py), 0 while forwarding
    h: IpHeaders = field(init=False)  # ip_rcv: the parsed headers and the plain tier
    nh: np.ndarray = field(init=False)  # ip_route_input: next-hop index
    egress: np.ndarray = field(init=False)  # ip_forward: egress port
    mac: np.ndarray = field(init=False)  # ip_forward (neigh_output): next hop's mac48


class TraceText(Protocol):
    """How the operator's side words the values of a trace record
    (engine/cli/trace_format.py); stages print their lines through it."""

    def code(self, code: int) -> str: ...  # a verdict code
    def ip(self, addr: int) -> str: ...
    def mac(self, raw: bytes) -> str: ...
    def mac48(self, key: int) -> str: ...
    def port(self, port: int) -> str: ...
    def pkt_type(self, pkt_type: int) -> str: ...
    def nh_type(self, nh_type: int) -> str: ...
    def proto(self, protocol: int) -> str: ...


# One line of a packet's trace: (label, text); label None is the stage's own name.
TraceLine = tuple[str | None, str]


@dataclass(frozen=True)
class Stage:
    name: str  # the kernel function the stage mirrors, as traces print it
    key: str  # short name: the prefix of its trace record fields, the bench's column
    run: Callable[[Batch, Tables], None]  # one batch, tiers and all
    reasons: frozenset[int]  # the verdict codes it can decide
    # for `fwd trace`: the TRACE_RECORD fields (engine/shm/trace_capture.py) it fills
    # from the batch state after it ran, besides its code and plain fields
    record: Callable[[Batch, Tables], dict[str, np.ndarray]]
    # its lines in `fwd trace` for one record (engine/observe/trace.py's to_dicts),
    # ending with its verdict if it decided one (printing stops there)
    lines: Callable[[Mapping[str, Any], TraceText], list[TraceLine]]

    @property
    def code_field(self) -> str:
        """The trace record field holding the verdict code after this stage."""
        return f"{self.key}_code"

    @property
    def plain_field(self) -> str:
        """The trace record field telling whether the packet was still plain after it."""
        return f"{self.key}_plain"
