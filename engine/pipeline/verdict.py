"""Per-packet verdict codes, and how stages decide them.

A batch carries one uint8 code per packet: 0 forward, 1..31 a `Drop` reason,
SLOW + n a `Slow` reason (hand to the slow-path worker).

Every stage works in two tiers, as VPP's nodes do: a cheap test over the whole batch
finds the *plain* packets (the ones every check of the stage passes, by a test that
implies all of them), and only the rest, usually none, go through the stage's checks
one by one in the kernel's order (`first_match`). A packet that was not plain in one
stage stays on the careful tier in the later ones (`Batch.plain`).
"""

from __future__ import annotations

import numpy as np

from engine.counters import Drop, Slow

FORWARD = 0
SLOW = 32
NCODES = SLOW + len(Slow)

# Linux skb->pkt_type values for what the Ethernet destination said
PACKET_HOST, PACKET_BROADCAST, PACKET_MULTICAST, PACKET_OTHERHOST = 0, 1, 2, 3


def drop(reason: Drop) -> int:
    return int(reason)


def slow(reason: Slow) -> int:
    return SLOW + int(reason)


def first_match(checks: list[tuple[np.ndarray, int]], n: int) -> np.ndarray:
    """The code of the first check (in order) that holds for each of n packets, 0 if none.

    Applied in reverse so that an earlier check overwrites a later one; it also makes
    it harmless that later checks read garbage fields of packets an earlier check
    rejected (a too-short frame, say).
    """
    out = np.zeros(n, dtype=np.uint8)
    for mask, value in reversed(checks):  # slow path: one array assignment per check
        out[mask] = value
    return out
