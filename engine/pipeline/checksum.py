"""Internet checksum over batches (RFC 1071), and its incremental update (RFC 1624)."""

from __future__ import annotations

import struct

import numpy as np


def fold(total: np.ndarray) -> np.ndarray:
    """Fold a 32-bit sum of 16-bit words into 16 bits with end-around carry.
    Two folds suffice for sums of up to 65,535 words."""
    total = (total & 0xFFFF) + (total >> 16)
    return (total & 0xFFFF) + (total >> 16)


def header_ok(words: np.ndarray, ihl: np.ndarray) -> np.ndarray:
    """True where the IPv4 header checksum verifies (`ip_fast_csum(iph, ihl) == 0`).

    `words`: (N, >=30) big-endian 16-bit words of the IP header, valid up to ihl*2.
    The first 10 words are summed for every row; options words only where IHL > 5.
    """
    total = words[:, :10].sum(axis=1, dtype=np.uint32)
    longer = ihl > 5
    if longer.any():
        rows = np.flatnonzero(longer)
        extra = words[rows, 10:30].astype(np.uint32)
        valid = np.arange(10, 30)[None, :] < (ihl[rows, None].astype(np.int64) * 2)
        total[rows] += (extra * valid).sum(axis=1, dtype=np.uint32)
    return fold(total) == 0xFFFF


def compute(words: np.ndarray) -> np.ndarray:
    """Checksum field value for rows of 16-bit words (checksum word zeroed by caller)."""
    return (~fold(words.sum(axis=1, dtype=np.uint32))) & 0xFFFF


def ttl_decrement(check: np.ndarray | int) -> np.ndarray | int:
    """New header checksum after TTL drops by one (RFC 1624 eqn. 3), for an array of
    them or one Python int (the slow path: numpy's per-call cost is not for one).

    The TTL is the high byte of the (ttl, protocol) word, so that word m becomes
    m' = m - 0x0100 and HC' = ~(~HC + ~m + m') = ~(~HC + 0xFEFF) in one's complement
    (~m + m' = 0xFFFF - 0x0100). Eqn. 3 gives the same value as a checksum computed
    from scratch, 0x0000 included, unlike the older eqn. 2.
    """
    wide = check if isinstance(check, int) else check.astype(np.uint32)
    total = (~wide & 0xFFFF) + 0xFEFF
    return (~fold(total)) & 0xFFFF


def ttl_decrement_le(check_le: np.ndarray) -> np.ndarray:
    """`ttl_decrement` for the checksum field read little-endian (bytes swapped), as
    the kernel's `ip_decrease_ttl` does it on x86: add htons(0x0100), which reads as
    1, with end-around carry. Equal to eqn. 3 for all 65,536 values (a test checks),
    in three operations."""
    return check_le + np.uint16(1) + (check_le >= 0xFFFE)


# -- one packet at a time, for the slow path -------------------------------------------

# An IPv4 header's 16-bit words by IHL, to sum a header with one unpack.
HEADER_WORDS = {ihl: struct.Struct(f"!{ihl * 2}H") for ihl in range(5, 16)}


def fold16(total: int) -> int:
    """Fold a sum of 16-bit words to 16 bits with end-around carry (RFC 1071)."""
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return total


def inet_checksum(data: bytes | bytearray | memoryview) -> int:
    """RFC 1071 checksum of `data` (odd lengths padded with a zero byte): the value to
    store with the checksum field zeroed, or 0 when `data` carries a valid one."""
    data = bytes(data)
    if len(data) & 1:
        data += b"\0"
    return ~fold16(sum(struct.unpack(f"!{len(data) // 2}H", data))) & 0xFFFF


def ip_checksum(header: bytes | bytearray | memoryview) -> int:
    """`inet_checksum` of a whole IPv4 header (IHL*4 bytes): 0 when it verifies."""
    return ~fold16(sum(HEADER_WORDS[len(header) >> 2].unpack(header))) & 0xFFFF


def set_ip_checksum(header: bytearray) -> None:
    """Recompute an IPv4 header's checksum in place (`ip_send_check`)."""
    header[10:12] = b"\0\0"
    header[10:12] = ip_checksum(header).to_bytes(2, "big")
