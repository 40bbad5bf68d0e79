"""Receive-side scaling in software: the Toeplitz hash and redirection table of a NIC.

Reference: Microsoft, "RSS hashing functions" / "RSS hashing types" /
"Verifying the RSS Hash Calculation" (the de-facto spec NICs implement, and the
default key DPDK, Intel and Mellanox drivers ship).

The Toeplitz hash is linear over GF(2): input bit i (MSB first) contributes the
32-bit window of the key starting at key bit i. So per input byte position j a
256-entry table of XORed windows turns the hash of an (N, L) batch into L lookups
and XORs over N rows. Zero bytes contribute nothing, which lets one (N, 12) input
carry both 12-byte (4-tuple) and 8-byte (addresses only) hash inputs, and makes
an all-zero row hash to 0.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from numba import njit

from engine.io.pcap import PcapFrames
from engine.proto import ETH_HLEN, ETH_P_IP, IP_MF, IP_OFFSET, IPPROTO_TCP, IPPROTO_UDP

# Microsoft's verification key, the default RSS key of most NICs and DPDK drivers
DEFAULT_KEY = bytes.fromhex(
    "6d5a56da255b0ec24167253d43a38fb0d0ca2bcbae7b30b477cb2da38030f20c6a42b73bbeac01fa"
)

TUPLE_LEN = 12  # src ip, dst ip, src port, dst port
_ROWS = 16384


@lru_cache(maxsize=16)
def _tables(key: bytes, length: int) -> np.ndarray:
    """(length, 256) uint32: table[j][v] is the hash contribution of byte v at position j."""
    if length * 8 + 32 > len(key) * 8:
        raise ValueError(f"a {len(key)}-byte key hashes at most {len(key) - 4} input bytes, "
                         f"not {length}")
    k = int.from_bytes(key, "big")
    kbits = len(key) * 8
    windows = np.array([(k >> (kbits - 32 - i)) & 0xFFFFFFFF for i in range(length * 8)],
                       dtype=np.uint32).reshape(length, 8)
    # bit b of a byte, MSB first (b = 0 is the 0x80 bit), selects window 8j + b
    bits = np.unpackbits(np.arange(256, dtype=np.uint8)[:, None], axis=1).astype(bool)
    selected = np.where(bits[None, :, :], windows[:, None, :], np.uint32(0))
    return np.bitwise_xor.reduce(selected, axis=2)


def toeplitz_tables(key: bytes, length: int) -> np.ndarray:
    """(length, 256) uint32: the per-byte-position tables of the hash of `length`-byte
    inputs (for hashing elsewhere, e.g. the DPDK agent's C pass)."""
    return _tables(bytes(key), length)


def toeplitz_hash(input_bytes: np.ndarray, key: bytes = DEFAULT_KEY) -> np.ndarray:
    """The Toeplitz hash of each row of an (N, L) uint8 array, as uint32[N]."""
    rows = np.asarray(input_bytes, dtype=np.uint8)
    if rows.ndim == 1:
        rows = rows[None, :]
    n, length = rows.shape
    tables = _tables(bytes(key), length)
    h = np.zeros(n, dtype=np.uint32)
    for j in range(length):
        h ^= tables[j][rows[:, j]]
    return h


def _gather(data: np.ndarray, offsets: np.ndarray, lengths: np.ndarray,
            positions: np.ndarray) -> np.ndarray:
    """out[i, c] = frame i's byte at positions[i, c] (or positions[c]), 0 past its end.

    Only the header bytes RSS reads are gathered, in slices of rows so the index
    arrays stay small and in cache, rather than each frame's first 78 bytes (the
    longest Ethernet + IPv4 + ports header).
    """
    n = len(offsets)
    ncols = positions.shape[-1]
    out = np.zeros((n, ncols), dtype=np.uint8)
    if n == 0 or len(data) == 0:
        return out
    last = len(data) - 1
    for lo in range(0, n, _ROWS):
        hi = min(lo + _ROWS, n)
        pos = positions if positions.ndim == 1 else positions[lo:hi]
        inside = pos < lengths[lo:hi, None]
        idx = np.minimum(offsets[lo:hi, None] + pos, last)
        np.copyto(out[lo:hi], data[idx], where=inside)
    return out


# the bytes of Ethernet + IPv4 headers RSS reads, by frame offset (RFC 894, RFC 791)
_ETHERTYPE = (12, 13)
_VER_IHL = ETH_HLEN
_FRAG = (ETH_HLEN + 6, ETH_HLEN + 7)
_PROTO = ETH_HLEN + 9
_ADDRS = tuple(range(ETH_HLEN + 12, ETH_HLEN + 20))
_FIXED = np.array(_ETHERTYPE + (_VER_IHL,) + _FRAG + (_PROTO,) + _ADDRS)
_COL = {p: c for c, p in enumerate(_FIXED.tolist())}


def rss_tuple(data: np.ndarray | PcapFrames, offsets: np.ndarray | None = None,
              lengths: np.ndarray | None = None) -> np.ndarray:
    """The RSS hash input of each Ethernet frame, (N, 12) uint8, network byte order.

    As a NIC with the IPv4, TCP/IPv4 and UDP/IPv4 hash types enabled ("RSS hashing
    types"): TCP and UDP packets that are not fragments hash src ip, dst ip, src port,
    dst port; other IPv4 packets, and every fragment (offset != 0 or MF set, so all
    fragments of a datagram land on one queue), hash src ip, dst ip (the port bytes
    stay zero, which the Toeplitz hash ignores). Anything that is not an IPv4 packet
    whose addresses are present (a VLAN tag is not looked through) gets an all-zero
    row, i.e. hash 0. The ports are found after the IP options (IHL).
    Takes `PcapFrames`, or its (data, offsets, lengths).
    """
    if isinstance(data, PcapFrames):
        data, offsets, lengths = data.data, data.offsets, data.lengths
    if offsets is None or lengths is None:
        raise TypeError("rss_tuple(frames) or rss_tuple(data, offsets, lengths)")
    data = np.asarray(data, dtype=np.uint8).reshape(-1)
    offsets = np.asarray(offsets, dtype=np.int64)
    lengths = np.asarray(lengths, dtype=np.int64)
    hdr = _gather(data, offsets, lengths, _FIXED)
    n = len(hdr)
    out = np.zeros((n, TUPLE_LEN), dtype=np.uint8)

    def col(p: int) -> np.ndarray:
        return hdr[:, _COL[p]].astype(np.int64)

    ethertype = (col(_ETHERTYPE[0]) << 8) | col(_ETHERTYPE[1])
    version = col(_VER_IHL) >> 4
    ihl = col(_VER_IHL) & 0x0F
    ipv4 = (ethertype == ETH_P_IP) & (version == 4) & (ihl >= 5) & (lengths >= ETH_HLEN + 20)
    addr_cols = [_COL[p] for p in _ADDRS]
    out[:, :8] = hdr[:, addr_cols] * ipv4[:, None].astype(np.uint8)
    proto = col(_PROTO)
    frag = ((col(_FRAG[0]) << 8) | col(_FRAG[1])) & (IP_MF | IP_OFFSET)
    l4 = ETH_HLEN + 4 * ihl
    ports = (ipv4 & ((proto == IPPROTO_TCP) | (proto == IPPROTO_UDP)) & (frag == 0)
             & (lengths >= l4 + 4))
    rows = np.flatnonzero(ports)
    out[rows, 8:] = _gather(data, offsets[rows], lengths[rows],
                            l4[rows, None] + np.arange(4))
    return out


def rss_queue(hashes: np.ndarray, nqueues: int, reta_size: int = 128) -> np.ndarray:
    """The RX queue of each hash: reta[hash % reta_size] with the default table
    reta[i] = i % nqueues (the low bits of the hash index it, as in NICs and
    DPDK's rte_eth_dev_rss_reta_update)."""
    if nqueues < 1:
        raise ValueError(f"nqueues must be at least 1, not {nqueues}")
    if reta_size < 1 or reta_size & (reta_size - 1):
        raise ValueError(f"reta_size must be a power of two, not {reta_size}")
    reta = np.arange(reta_size, dtype=np.int64) % nqueues
    return reta[np.asarray(hashes, dtype=np.uint32) & np.uint32(reta_size - 1)]


@njit(cache=True, nogil=True)
def _queues(data: np.ndarray, offsets: np.ndarray, lengths: np.ndarray, tables: np.ndarray,
            reta: np.ndarray, out: np.ndarray) -> None:
    """rss_queue(toeplitz_hash(rss_tuple(...))) in one pass: each frame's header bytes
    read where they are, its hash input's bytes looked up in `tables` as they come."""
    mask = reta.shape[0] - 1
    for i in range(offsets.shape[0]):
        off, n = offsets[i], lengths[i]
        h = np.uint32(0)
        if n >= ETH_HLEN + 20:
            b = off + ETH_HLEN
            ethertype = (np.int64(data[off + 12]) << 8) | np.int64(data[off + 13])
            ver_ihl = np.int64(data[b])
            ihl = ver_ihl & 0x0F
            if ethertype == ETH_P_IP and ver_ihl >> 4 == 4 and ihl >= 5:
                for j in range(8):  # the source and destination addresses
                    h ^= tables[j, data[b + 12 + j]]
                proto = data[b + 9]
                frag = ((np.int64(data[b + 6]) << 8) | np.int64(data[b + 7])) & (IP_MF
                                                                                 | IP_OFFSET)
                l4 = ETH_HLEN + 4 * ihl
                if (proto == IPPROTO_TCP or proto == IPPROTO_UDP) and frag == 0 \
                        and n >= l4 + 4:
                    for j in range(4):  # the ports
                        h ^= tables[8 + j, data[off + l4 + j]]
        out[i] = reta[h & mask]


def rss_queues(data: np.ndarray, offsets: np.ndarray, lengths: np.ndarray, nqueues: int,
               key: bytes = DEFAULT_KEY, reta_size: int = 128) -> np.ndarray:
    """Each frame's RX queue, as rss_queue(toeplitz_hash(rss_tuple(...))) computes it
    (tests/test_rss.py holds them equal), compiled: one pass over the frames."""
    if nqueues < 1:
        raise ValueError(f"nqueues must be at least 1, not {nqueues}")
    if reta_size < 1 or reta_size & (reta_size - 1):
        raise ValueError(f"reta_size must be a power of two, not {reta_size}")
    out = np.empty(len(offsets), dtype=np.int64)
    _queues(np.asarray(data, dtype=np.uint8).reshape(-1), np.asarray(offsets, dtype=np.int64),
            np.asarray(lengths, dtype=np.int64), _tables(bytes(key), TUPLE_LEN),
            np.arange(reta_size, dtype=np.int64) % nqueues, out)
    return out
