"""The AF_PACKET driver: a live port seen through the kernel's packet sockets.

One `AfPacketPort` per (worker, port) holds two sockets on the interface:

- an RX socket with a `TPACKET_V2` ring mapped into the process: one frame a 2 KiB
  slot, whose status the kernel flips to `TP_STATUS_USER` as soon as the frame is
  written (tpacket_rcv, waking a poll()er); we walk the run of ready slots, copy the
  frames into pool buffers in one batch and hand the slots back (`TP_STATUS_KERNEL`).
  No syscall and no Python object per frame. (`rx_ring="v3"`: a `TPACKET_V3` ring of
  blocks of packed frames, walked by their `tpacket3_hdr` chain; the kernel hands a
  block over only when it is full or its retire timer fires, and that timer runs in
  jiffies: 1 ms is 4 ms at HZ=250, and each hop of a quiet link waits for it. That is
  why V2 is the default, as in DPDK's af_packet PMD: a ping through the idle lab
  engine 1.6-2.3 ms with V3, 0.6-0.8 with V2 on this machine; 64-byte throughput and
  CPU a packet the same within noise, perf/README.md.) The socket joins a
  `PACKET_FANOUT_HASH` group (one group id per port, shared by every worker of the
  port): the kernel hashes each frame's flow (`skb_get_hash`, addresses
  and ports) and picks one socket of the group, so one flow always lands on one
  worker, as a NIC's RSS would. It ignores outgoing frames (`PACKET_IGNORE_OUTGOING`)
  and puts the port in promiscuous mode: the engine, not the kernel, owns the MAC.
- a TX socket bound with protocol 0, so it never receives anything, with
  `PACKET_QDISC_BYPASS` (straight to the driver's xmit, as DPDK would; this also skips
  the taps, so no packet socket sees our own transmissions) and a `TPACKET_V2` TX
  ring: frames are copied into ring slots, marked `TP_STATUS_SEND_REQUEST`, and one
  `send()` flushes the whole batch. `sendmmsg` is kept as an alternative to measure.

Offloads. A sender with TSO/GSO and tx-checksumming on (the kernel's defaults on
veth, and on most NICs' hosts) hands its device TCP super-frames of up to 64 KiB and
L4 checksums that hold only the pseudo-header sum (CHECKSUM_PARTIAL); veth passes
both to the engine's port whole, and a NIC's GRO/LRO makes such frames too. The
kernel router copes: it forwards the skb as it is and segments or checksums only
before a device that cannot (validate_xmit_skb: skb_gso_segment,
skb_checksum_help). We cannot, once a frame is copied out, so the RX socket asks for
a `virtio_net_hdr` before each frame (PACKET_VNET_HDR, as VPP's af_packet and
qemu's tap do): it carries gso_type/gso_size and csum_start/csum_offset. The C
helper then cuts TCPV4 and UDP_L4 super-frames into gso_size segments (headers,
IP id, TCP seq and flags, every checksum: tcp_gso_segment, __udp_gso_segment) and
fills in partial checksums, while copying into the pool; the fast path sees the
frames a wire would carry. Without the C helper (`offloads` is then off) such
frames are dropped as rx_oversize and partial checksums forwarded as they came.
Measured in the lab with h1/h2's offloads on: iperf3 TCP through one worker
2.3 Gbit/s; without this the SYN already left with a wrong checksum. A NIC's LRO
is another matter: it merges without keeping what tells how to cut back, so the
control process turns it off on each port while the engine runs and says so on
stderr, as the kernel does on a forwarding interface (`disable_lro`).

GSO super-frames (up to 64 KiB) do not fit a V2 slot: with PACKET_COPY_THRESH the
kernel then also queues the whole frame on the socket and marks the slot
`TP_STATUS_COPY`; that frame alone is received with recv() (one syscall per 64 KiB)
and cut into segments from there. V3 blocks hold such frames in place.

Two sockets, not one, because `PACKET_VERSION` is per socket (a V3 RX ring wants its
variable-size blocks, the TX ring V2's fixed frames) and a protocol-0 socket is the
simplest way to never read back what we send.

The serial parts (walking a block's next-offset chain, copying frames and writing
their length/port/time, filling TX slots) run in a tiny C helper built with cffi on
first use (cached); numpy and pure Python versions remain for machines without a
compiler and for the benchmark (`perf/bench_afpacket.py`) that chose between them
(its numbers: perf/README.md).

Reference: Documentation/networking/packet_mmap.rst and net/packet/af_packet.c. The
numpy paths rely on x86's ordered stores/loads (TSO) between a block's status word
and its contents; the C helper uses acquire/release atomics and is portable.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import hashlib
import importlib.util
import mmap
import os
import select
import socket
import struct
import sys
import tempfile
import threading
import weakref
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from engine.config import PortConfig
from engine.proto import ETH_P_ALL
from engine.shm.memory import EngineMemory
from engine.shm.pool import Buffers

# <linux/if_ether.h>, <linux/if_packet.h>
SOL_PACKET = 263
PACKET_ADD_MEMBERSHIP = 1
PACKET_RX_RING = 5
PACKET_STATISTICS = 6
PACKET_VERSION = 10
PACKET_TX_RING = 13
PACKET_COPY_THRESH = 7
PACKET_LOSS = 14
PACKET_VNET_HDR = 15
PACKET_FANOUT = 18
PACKET_QDISC_BYPASS = 20
PACKET_IGNORE_OUTGOING = 23
PACKET_MR_PROMISC = 1
PACKET_FANOUT_HASH = 0
PACKET_FANOUT_LB = 1
PACKET_FANOUT_CPU = 2
PACKET_FANOUT_QM = 5
FANOUT_MODES = {"hash": PACKET_FANOUT_HASH, "lb": PACKET_FANOUT_LB, "cpu": PACKET_FANOUT_CPU,
                "qm": PACKET_FANOUT_QM}
SO_BUSY_POLL = 46
SO_RCVBUFFORCE = 33
COPY_RCVBUF = 4 << 20  # V2 RX: socket memory for frames queued whole (TP_STATUS_COPY)
COPY_SCRATCH = 65536 + 4096  # the longest GSO super-frame, its vnet header and Ethernet's
TPACKET_V2 = 1
TPACKET_V3 = 2
PACKET_OUTGOING = 4  # sll_pkttype of a frame we (or the host) sent

TP_STATUS_KERNEL = 0
TP_STATUS_USER = 1
TP_STATUS_COPY = 2  # V2 RX: the frame did not fit its slot; it is queued whole on the socket
TP_STATUS_AVAILABLE = 0
TP_STATUS_SEND_REQUEST = 1
TP_STATUS_SENDING = 2
TPACKET_ALIGNMENT = 16
V3_ALIGNMENT = 8  # frames inside a V3 block start on 8-byte boundaries (af_packet.c)

# tpacket_block_desc: version, offset_to_priv, then tpacket_hdr_v1 (block_status,
# num_pkts, offset_to_first_pkt, blk_len, ...): byte offsets of the u32 fields
BLK_STATUS, BLK_NUM_PKTS, BLK_FIRST, BLK_LEN = 8, 12, 16, 20
# tpacket3_hdr: next_offset, sec, nsec, snaplen, len, status (u32), mac, net (u16),
# then 12 bytes of variant and 8 of padding; a sockaddr_ll follows at 48 (aligned)
H3_NEXT, H3_SEC, H3_NSEC, H3_SNAP, H3_LEN, H3_MAC = 0, 4, 8, 12, 16, 24
H3_PKTTYPE = 48 + 10  # sockaddr_ll.sll_pkttype
# tpacket2_hdr is 32 bytes; without PACKET_TX_HAS_OFF a TX frame's data starts at
# TPACKET2_HDRLEN - sizeof(sockaddr_ll) = 32 + 20 - 20
T2_LEN = 4
TX_DATA_OFF = 32
VNET_HDR_LEN = 10  # struct virtio_net_hdr, before each frame with PACKET_VNET_HDR

WALKERS = ("c", "numpy", "python")
COPIERS = ("c", "numpy")
TX_MODES = ("ring", "ring-numpy", "sendmmsg", "send")


class AfPacketError(OSError):
    """A port could not be opened or used; the message names the interface and cause."""


# ---------------------------------------------------------------- the C helper

_C_DECLS = """
int fwd_walk_block(uint8_t *block, int64_t block_off, uint32_t cap, int64_t *off,
                   uint32_t *snap, uint32_t *len, int64_t *ts, uint8_t *pkttype);
void fwd_release_block(uint8_t *block);
int fwd_walk_v2(uint8_t *ring, uint32_t frame_size, uint32_t nframes, uint32_t head,
                uint32_t cap, int64_t *off, uint32_t *snap, uint32_t *len, int64_t *ts,
                uint8_t *pkttype);
void fwd_release_v2(uint8_t *ring, uint32_t frame_size, uint32_t nframes, uint32_t head,
                    uint32_t n);
void fwd_copy_rows(const uint8_t *src, const int64_t *off, const uint32_t *len,
                   const int64_t *ts, uint32_t n, uint8_t *pool, uint64_t bufsize,
                   const uint32_t *idx, uint32_t *pool_len, uint16_t *pool_port,
                   int64_t *pool_ts, uint16_t port);
void fwd_pack_rows(const uint8_t *pool, uint64_t bufsize, const uint32_t *idx,
                   const uint32_t *len, uint32_t n, uint8_t *dst);
void fwd_pcap_records(const uint8_t *src, const int64_t *off, const int64_t *len,
                      const int64_t *ts, uint64_t n, int nanosecond, uint8_t *dst);
int fwd_tx_fill(uint8_t *ring, uint32_t frame_size, uint32_t nframes, uint32_t *head,
                const uint8_t *pool, uint64_t bufsize, const uint32_t *pool_len,
                const uint32_t *idx, uint32_t n, uint32_t *too_long, int vnet);
int fwd_sendmmsg(int fd, const uint8_t *pool, uint64_t bufsize, const uint32_t *pool_len,
                 const uint32_t *idx, uint32_t n);
int fwd_plan_offloads(const uint8_t *ring, const int64_t *off, const uint32_t *len,
                      const uint32_t *snap, uint32_t n, uint8_t *work, uint32_t *segs,
                      uint32_t *seglen);
int fwd_copy_offloaded(const uint8_t *src, const int64_t *off, const uint32_t *len,
                       const int64_t *ts, const uint8_t *work, const uint32_t *take,
                       uint32_t first, uint32_t n, uint8_t *pool, uint64_t bufsize,
                       const uint32_t *idx, uint32_t *pool_len, uint16_t *pool_port,
                       int64_t *pool_ts, uint16_t port);
"""

_C_SOURCE = r"""
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <stdint.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>

static inline uint32_t rd32(const uint8_t *p) { uint32_t v; memcpy(&v, p, 4); return v; }
static inline uint16_t rd16(const uint8_t *p) { uint16_t v; memcpy(&v, p, 2); return v; }

/* One TPACKET_V3 block: -1 if the kernel still owns it, else its frame count, with
   every frame's ring offset, lengths, time and packet type written out. */
int fwd_walk_block(uint8_t *block, int64_t block_off, uint32_t cap, int64_t *off,
                   uint32_t *snap, uint32_t *len, int64_t *ts, uint8_t *pkttype)
{
    uint32_t status = __atomic_load_n((uint32_t *)(block + 8), __ATOMIC_ACQUIRE);
    if (!(status & 1))
        return -1;
    uint32_t n = rd32(block + 12), pos = rd32(block + 16);
    if (n > cap)
        n = cap;
    for (uint32_t i = 0; i < n; i++) {
        const uint8_t *h = block + pos;
        off[i] = block_off + pos + rd16(h + 24);
        snap[i] = rd32(h + 12);
        len[i] = rd32(h + 16);
        ts[i] = (int64_t)rd32(h + 4) * 1000000000 + rd32(h + 8);
        pkttype[i] = h[58];
        pos += rd32(h);
    }
    return (int)n;
}

void fwd_release_block(uint8_t *block)
{
    __atomic_store_n((uint32_t *)(block + 8), 0, __ATOMIC_RELEASE);
}

/* Frames into their pool buffers, with the buffers' length, port and time. */
void fwd_copy_rows(const uint8_t *src, const int64_t *off, const uint32_t *len,
                   const int64_t *ts, uint32_t n, uint8_t *pool, uint64_t bufsize,
                   const uint32_t *idx, uint32_t *pool_len, uint16_t *pool_port,
                   int64_t *pool_ts, uint16_t port)
{
    for (uint32_t i = 0; i < n; i++) {
        uint32_t b = idx[i];
        memcpy(pool + (uint64_t)b * bufsize, src + off[i], len[i]);
        pool_len[b] = len[i];
        pool_port[b] = port;
        pool_ts[b] = ts[i];
    }
}

/* The first len[i] bytes of pool buffer idx[i], for each i, back to back into dst
   (the pcap driver's output: frames leave the pool for a capture file). */
void fwd_pack_rows(const uint8_t *pool, uint64_t bufsize, const uint32_t *idx,
                   const uint32_t *len, uint32_t n, uint8_t *dst)
{
    for (uint32_t i = 0; i < n; i++) {
        memcpy(dst, pool + (uint64_t)idx[i] * bufsize, len[i]);
        dst += len[i];
    }
}

static inline void wr32le(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
    p[2] = (uint8_t)(v >> 16);
    p[3] = (uint8_t)(v >> 24);
}

/* Classic pcap records (16-byte little-endian header, then the bytes) of frames
   src[off[i] : off[i] + len[i]], in the order given, back to back into dst: a capture
   file's body without a byte-wise index array (engine/io/pcap.py write_pcap). */
void fwd_pcap_records(const uint8_t *src, const int64_t *off, const int64_t *len,
                      const int64_t *ts, uint64_t n, int nanosecond, uint8_t *dst)
{
    for (uint64_t i = 0; i < n; i++) {
        uint32_t frac = (uint32_t)(ts[i] % 1000000000);
        wr32le(dst, (uint32_t)(ts[i] / 1000000000));
        wr32le(dst + 4, nanosecond ? frac : frac / 1000);
        wr32le(dst + 8, (uint32_t)len[i]);
        wr32le(dst + 12, (uint32_t)len[i]);
        memcpy(dst + 16, src + off[i], (size_t)len[i]);
        dst += 16 + len[i];
    }
}

/* TPACKET_V2 RX: the frames ready from slot `head` on (tp_status TP_STATUS_USER), at
   most `cap`, written out as fwd_walk_block does. A frame the kernel could not fit in
   its slot and queued whole on the socket (TP_STATUS_COPY: PACKET_COPY_THRESH, a GSO
   super-frame) ends the run; alone, it is returned as -1 (its header walked). */
int fwd_walk_v2(uint8_t *ring, uint32_t frame_size, uint32_t nframes, uint32_t head,
                uint32_t cap, int64_t *off, uint32_t *snap, uint32_t *len, int64_t *ts,
                uint8_t *pkttype)
{
    uint32_t n = 0, h = head;
    if (cap > nframes)
        cap = nframes;
    while (n < cap) {
        uint64_t base = (uint64_t)h * frame_size;
        const uint8_t *f = ring + base;
        uint32_t status = __atomic_load_n((uint32_t *)f, __ATOMIC_ACQUIRE);
        if (!(status & 1))
            break;
        if ((status & 2) && n)  /* TP_STATUS_COPY: on its own */
            break;
        /* tpacket2_hdr: status, len, snaplen, mac, net, sec, nsec; sockaddr_ll at 32 */
        off[n] = (int64_t)(base + rd16(f + 12));
        len[n] = rd32(f + 4);
        snap[n] = rd32(f + 8);
        ts[n] = (int64_t)rd32(f + 16) * 1000000000 + rd32(f + 20);
        pkttype[n] = f[32 + 10];
        n++;
        if (status & 2)
            return -1;
        h = h + 1 == nframes ? 0 : h + 1;
    }
    return (int)n;
}

/* Hand n V2 RX slots from `head` on back to the kernel (TP_STATUS_KERNEL), each after
   everything read from it (release order). */
void fwd_release_v2(uint8_t *ring, uint32_t frame_size, uint32_t nframes, uint32_t head,
                    uint32_t n)
{
    for (uint32_t i = 0; i < n; i++) {
        __atomic_store_n((uint32_t *)(ring + (uint64_t)head * frame_size), 0,
                         __ATOMIC_RELEASE);
        head = head + 1 == nframes ? 0 : head + 1;
    }
}

/* Fill TX ring slots from *head on, advancing it; stops at the first slot the kernel
   still holds. A frame longer than a slot is skipped and counted in *too_long.
   Returns the number of frames taken (placed or skipped), a prefix of idx.
   `vnet`: the socket has PACKET_VNET_HDR; each frame is preceded by a virtio_net_hdr
   whose hdr_len is the whole frame, so that tpacket_snd copies it into the skb's
   linear part instead of attaching the ring's page as a fragment (which a device
   without scatter-gather then has copied again: validate_xmit_skb's linearize). */
int fwd_tx_fill(uint8_t *ring, uint32_t frame_size, uint32_t nframes, uint32_t *head,
                const uint8_t *pool, uint64_t bufsize, const uint32_t *pool_len,
                const uint32_t *idx, uint32_t n, uint32_t *too_long, int vnet)
{
    uint32_t i, h = *head, pre = vnet ? 10 : 0;
    for (i = 0; i < n; i++) {
        uint32_t len = pool_len[idx[i]];
        if (len > frame_size - 32 - pre) {
            (*too_long)++;
            continue;
        }
        uint8_t *slot = ring + (uint64_t)h * frame_size;
        uint32_t *status = (uint32_t *)slot;
        if (__atomic_load_n(status, __ATOMIC_ACQUIRE) & 3)  /* SEND_REQUEST | SENDING */
            break;
        if (vnet) {
            uint16_t hdr[5] = {0, (uint16_t)len, 0, 0, 0};  /* flags, gso_type 0 (none) */
            memcpy(slot + 32, hdr, 10);
        }
        memcpy(slot + 32 + pre, pool + (uint64_t)idx[i] * bufsize, len);
        status[1] = len + pre;  /* tp_len */
        __atomic_store_n(status, 1, __ATOMIC_RELEASE);  /* TP_STATUS_SEND_REQUEST */
        h = h + 1 == nframes ? 0 : h + 1;
    }
    *head = h;
    return (int)i;
}

int fwd_sendmmsg(int fd, const uint8_t *pool, uint64_t bufsize, const uint32_t *pool_len,
                 const uint32_t *idx, uint32_t n)
{
    struct mmsghdr m[256];
    struct iovec v[256];
    uint32_t done = 0;
    while (done < n) {
        uint32_t k = n - done < 256 ? n - done : 256;
        for (uint32_t i = 0; i < k; i++) {
            v[i].iov_base = (void *)(pool + (uint64_t)idx[done + i] * bufsize);
            v[i].iov_len = pool_len[idx[done + i]];
            memset(&m[i], 0, sizeof m[i]);
            m[i].msg_hdr.msg_iov = &v[i];
            m[i].msg_hdr.msg_iovlen = 1;
        }
        int r = sendmmsg(fd, m, k, MSG_DONTWAIT);
        if (r < 0)
            return done ? (int)done : -errno;
        done += (uint32_t)r;
        if ((uint32_t)r < k)
            break;
    }
    return (int)done;
}
/* ---- offloads: frames as the kernel hands them with PACKET_VNET_HDR ----

   Each frame is preceded by a struct virtio_net_hdr (10 bytes, host order):
   flags (1: NEEDS_CSUM), gso_type (1: TCPV4, 5: UDP_L4, | 0x80: ECN), hdr_len,
   gso_size, csum_start, csum_offset (virtio_net_hdr_from_skb in the kernel).
   A sender's TSO/GSO super-frame (veth keeps them whole) and a CHECKSUM_PARTIAL
   frame (tx-checksumming on at the sender: the L4 checksum field holds only the
   pseudo-header sum) are finished here, as the kernel does before a device that
   cannot: skb_segment + tcp_gso_segment / __udp_gso_segment, skb_checksum_help. */

enum { W_COPY = 0, W_CSUM = 1, W_TCP = 2, W_UDP = 3, W_BAD = 4 };

static inline uint16_t be16(const uint8_t *p) { return (uint16_t)(p[0] << 8 | p[1]); }
static inline uint32_t be32(const uint8_t *p) { return (uint32_t)be16(p) << 16 | be16(p + 2); }
static inline void wrbe16(uint8_t *p, uint32_t v) { p[0] = (uint8_t)(v >> 8); p[1] = (uint8_t)v; }
static inline void wrbe32(uint8_t *p, uint32_t v) { wrbe16(p, v >> 16); wrbe16(p + 2, v); }

/* ones' complement sum of big-endian 16-bit words (an odd byte padded with 0) */
static uint64_t csum_add(const uint8_t *p, uint32_t n, uint64_t sum)
{
    uint32_t i = 0;
    for (; i + 1 < n; i += 2)
        sum += be16(p + i);
    if (n & 1)
        sum += (uint32_t)p[n - 1] << 8;
    return sum;
}

static uint16_t csum_fold(uint64_t sum)
{
    while (sum >> 16)
        sum = (sum & 0xffff) + (sum >> 16);
    return (uint16_t)~sum;
}

/* Header length of a GSO frame (Ethernet + IPv4 + TCP or UDP), 0 if not one we can
   segment (the kernel only hands TCPV4/UDP_L4/TCPV6 types over a vnet header). */
static uint32_t gso_headers(const uint8_t *f, uint32_t len, int udp)
{
    if (len < 14 + 20 || be16(f + 12) != 0x0800 || (f[14] >> 4) != 4)
        return 0;
    uint32_t l4 = 14 + (uint32_t)(f[14] & 15) * 4;
    if (l4 < 34 || f[23] != (udp ? 17 : 6) || l4 + (udp ? 8 : 20) > len)
        return 0;
    uint32_t hdr = udp ? l4 + 8 : l4 + (uint32_t)(f[l4 + 12] >> 4) * 4;
    return hdr > l4 + 7 && hdr < len ? hdr : 0;
}

/* Per frame (its vnet header just before off[i]): the work it needs, the buffers it
   becomes and the longest of them. Returns how many frames need more than a copy. */
int fwd_plan_offloads(const uint8_t *ring, const int64_t *off, const uint32_t *len,
                      const uint32_t *snap, uint32_t n, uint8_t *work, uint32_t *segs,
                      uint32_t *seglen)
{
    int busy = 0;
    for (uint32_t i = 0; i < n; i++) {
        const uint8_t *f = ring + off[i], *v = f - 10;
        uint8_t flags = v[0], type = v[1] & 0x7f;
        uint16_t gso = rd16(v + 4), start = rd16(v + 6), csum_off = rd16(v + 8);
        work[i] = W_COPY;
        segs[i] = 1;
        seglen[i] = len[i];
        if (type == 0 && !(flags & 1))
            continue;
        busy++;
        if (snap[i] < len[i]) /* truncated by the ring: dropped as oversize anyway */
            continue;
        if (type == 0) {
            if ((uint32_t)start + csum_off + 2 <= len[i])
                work[i] = W_CSUM;
            else
                work[i] = W_BAD, segs[i] = 0;
            continue;
        }
        int udp = type == 5;
        uint32_t hdr = (type == 1 || udp) && gso ? gso_headers(f, len[i], udp) : 0;
        if (!hdr) {
            work[i] = W_BAD, segs[i] = 0;
            continue;
        }
        uint32_t payload = len[i] - hdr;
        work[i] = udp ? W_UDP : W_TCP;
        segs[i] = (payload + gso - 1) / gso;
        seglen[i] = hdr + (payload < gso ? payload : gso);
    }
    return busy;
}

/* Segments [first, first + count) of GSO frame f into buffers idx[0..count). Each is
   the frame's headers with IPv4 tot_len, id (+1 a segment), header checksum, and TCP
   seq (+gso_size a segment; FIN/PSH only on the last, CWR only on the first) or UDP
   length rewritten, and the L4 checksum computed over the segment. */
static void gso_segment(const uint8_t *f, uint32_t len, int udp, uint32_t first,
                        uint32_t count, uint8_t *pool, uint64_t bufsize, const uint32_t *idx,
                        uint32_t *pool_len, uint16_t *pool_port, int64_t *pool_ts,
                        uint16_t port, int64_t ts)
{
    const uint8_t *v = f - 10;
    uint32_t mss = rd16(v + 4), hdr = gso_headers(f, len, udp);
    uint32_t ihl = (uint32_t)(f[14] & 15) * 4, l4 = 14 + ihl, payload = len - hdr;
    uint32_t nseg = (payload + mss - 1) / mss;
    uint16_t id = be16(f + 18);
    uint32_t seq = be32(f + l4 + 4);
    uint64_t pseudo = csum_add(f + 26, 8, 0) + (udp ? 17 : 6);  /* addresses, protocol */
    for (uint32_t k = 0; k < count; k++) {
        uint32_t s = first + k;
        uint32_t chunk = s + 1 < nseg ? mss : payload - s * mss;
        uint8_t *d = pool + (uint64_t)idx[k] * bufsize, *t = d + l4;
        memcpy(d, f, hdr);
        memcpy(d + hdr, f + hdr + (uint64_t)s * mss, chunk);
        uint32_t l4len = hdr - l4 + chunk;
        wrbe16(d + 16, ihl + l4len);
        wrbe16(d + 18, (uint16_t)(id + s));
        wrbe16(d + 24, 0);
        wrbe16(d + 24, csum_fold(csum_add(d + 14, ihl, 0)));
        uint8_t *check;
        if (udp) {
            wrbe16(t + 4, l4len);
            check = t + 6;
        } else {
            wrbe32(t + 4, seq + s * mss);
            if (s + 1 < nseg)
                t[13] &= (uint8_t)~0x09;  /* FIN, PSH: the last segment's */
            if (s > 0)
                t[13] &= (uint8_t)~0x80;  /* CWR: the first segment's */
            check = t + 16;
        }
        wrbe16(check, 0);
        uint16_t c = csum_fold(csum_add(t, l4len, pseudo + l4len));
        wrbe16(check, udp && c == 0 ? 0xffff : c);
        pool_len[idx[k]] = hdr + chunk;
        pool_port[idx[k]] = port;
        pool_ts[idx[k]] = ts;
    }
}

/* fwd_copy_rows for a run of frames planned by fwd_plan_offloads: frame i gives
   take[i] buffers (0: dropped), its segments from `first` on for i == 0 (a frame
   split across bursts), from 0 for the others. Returns the buffers written. */
int fwd_copy_offloaded(const uint8_t *src, const int64_t *off, const uint32_t *len,
                       const int64_t *ts, const uint8_t *work, const uint32_t *take,
                       uint32_t first, uint32_t n, uint8_t *pool, uint64_t bufsize,
                       const uint32_t *idx, uint32_t *pool_len, uint16_t *pool_port,
                       int64_t *pool_ts, uint16_t port)
{
    uint32_t j = 0;
    for (uint32_t i = 0; i < n; i++) {
        if (!take[i])
            continue;
        const uint8_t *f = src + off[i];
        if (work[i] == W_TCP || work[i] == W_UDP) {
            gso_segment(f, len[i], work[i] == W_UDP, i ? 0 : first, take[i], pool, bufsize,
                        idx + j, pool_len, pool_port, pool_ts, port, ts[i]);
            j += take[i];
            continue;
        }
        uint32_t b = idx[j++];
        uint8_t *d = pool + (uint64_t)b * bufsize;
        memcpy(d, f, len[i]);
        if (work[i] == W_CSUM) {
            /* skb_checksum_help: the sum from csum_start to the end, the field's
               pseudo-header sum included, folded; 0 is sent as 0xffff */
            const uint8_t *v = f - 10;
            uint32_t start = rd16(v + 6), at = start + rd16(v + 8);
            wrbe16(d + at, csum_fold(csum_add(d + start, len[i] - start, 0)) ?: 0xffff);
        }
        pool_len[b] = len[i];
        pool_port[b] = port;
        pool_ts[b] = ts[i];
    }
    return (int)j;
}
"""


_lib_lock = threading.Lock()
_lib: Any = None
_lib_error: str | None = None


def _cache_dir() -> Path:
    base = os.environ.get("FWD_CACHE") or os.environ.get("XDG_CACHE_HOME")
    return Path(base) / "fwd" if base else Path.home() / ".cache" / "fwd"


def c_helper() -> Any:
    """The compiled helper module (`ffi`, `lib`), built once per source version and
    cached under ~/.cache/fwd (or $FWD_CACHE); None when it cannot be built."""
    global _lib, _lib_error
    with _lib_lock:
        if _lib is not None or _lib_error is not None:
            return _lib
        try:
            _lib = _build_helper()
        except Exception as e:  # no compiler, no headers, no cffi: fall back to numpy
            _lib_error = f"{type(e).__name__}: {e}"
        return _lib


def c_helper_error() -> str | None:
    """Why the C helper is not available (None if it is or was never tried)."""
    return _lib_error


def _build_helper() -> Any:
    import cffi

    tag = hashlib.sha256((_C_DECLS + _C_SOURCE + sys.version).encode()).hexdigest()[:12]
    name = f"_fwd_afpacket_{tag}"
    cache = _cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    found = sorted(cache.glob(f"{name}*.so"))
    if not found:
        ffi = cffi.FFI()
        ffi.cdef(_C_DECLS)
        ffi.set_source(name, _C_SOURCE, extra_compile_args=["-O2"])
        # build in a private directory, then rename: workers may race to build it
        with tempfile.TemporaryDirectory(dir=cache) as tmp:
            built = Path(ffi.compile(tmpdir=tmp, verbose=False))
            target = cache / built.name
            os.replace(built, target)
        found = [target]
    spec = importlib.util.spec_from_file_location(name, found[0])
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {found[0]}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _ptr(ffi: Any, a: np.ndarray, ctype: str) -> Any:
    return ffi.cast(ctype, a.ctypes.data)


# ---------------------------------------------------------------- block walkers


def walk_python(ring: memoryview | mmap.mmap, base: int, out: _Walk) -> int:
    """The chain in pure Python, one struct.unpack_from per frame."""
    n, pos = struct.unpack_from("<II", ring, base + BLK_NUM_PKTS)
    n = min(n, out.cap)
    unpack = struct.Struct("<IIIII4xH").unpack_from
    rows = []
    for _ in range(n):
        h = base + pos
        nxt, sec, nsec, sn, ln, mac = unpack(ring, h)
        rows.append((h + mac, sn, ln, sec * 1_000_000_000 + nsec, ring[h + H3_PKTTYPE]))
        pos += nxt
    if n:
        off, snap, length, ts, pkttype = zip(*rows, strict=True)
        out.off[:n], out.snap[:n], out.len[:n], out.ts[:n], out.pkttype[:n] = (
            off, snap, length, ts, pkttype)
    return n


def walk_numpy(r32: np.ndarray, r8: np.ndarray, base: int, out: _Walk,
               ring: mmap.mmap | None = None) -> int:
    """The chain with numpy when the block's frames have one size (the 64-byte flood),
    else in Python (`ring` given) or by pointer doubling (`ring` None).

    The guess: frames of one size sit at equal steps; it is exact iff every guessed
    header's next-offset points at the next guess, which one comparison checks."""
    b = base // 4
    n = min(int(r32[b + BLK_NUM_PKTS // 4]), out.cap)
    first = int(r32[b + BLK_FIRST // 4])
    if n == 0:
        return 0
    step = int(r32[b + (first + H3_NEXT) // 4])
    guess = (n == 1 or step > 0) and first + step * (n - 1) < len(r32) * 4 - base
    if guess:
        pos = first + step * np.arange(n, dtype=np.int64)
        nexts = r32[(base + pos) // 4]
        guess = bool(np.all(nexts[:-1] == step)) and nexts[-1] == 0
    if not guess:
        if ring is not None:  # measured: Python beats doubling ~3x on mixed sizes
            return walk_python(ring, base, out)
        pos = first + V3_ALIGNMENT * _chain_by_doubling(r32, base, first, n)
    h = (base + pos) // 4
    out.snap[:n] = r32[h + H3_SNAP // 4]
    out.len[:n] = r32[h + H3_LEN // 4]
    out.ts[:n] = r32[h + H3_SEC // 4].astype(np.int64) * 1_000_000_000 + r32[h + H3_NSEC // 4]
    out.off[:n] = base + pos + (r32[h + H3_MAC // 4] & 0xFFFF)
    out.pkttype[:n] = r8[base + pos + H3_PKTTYPE]
    return n


def _chain_by_doubling(r32: np.ndarray, base: int, first: int, n: int) -> np.ndarray:
    """Slot numbers (8-byte units from `first`) of the chain's n headers, by pointer
    doubling over every slot of the block (a header can only start on one): `jump[s]`
    is where slot s's next-offset leads, squared log2(n) times, each round doubling
    the known prefix of the chain. Correct for any sizes, but each round touches
    every slot: slower than Python in practice (see perf/bench_afpacket.py)."""
    blk_len = int(r32[base // 4 + BLK_LEN // 4])
    slots = max(1, (blk_len - first + V3_ALIGNMENT - 1) // V3_ALIGNMENT)
    s = np.arange(slots, dtype=np.int64)
    nxt = r32[(base + first) // 4 + (V3_ALIGNMENT // 4) * s].astype(np.int64)
    jump = np.minimum(s + nxt // V3_ALIGNMENT, slots - 1)  # garbage must stay in range
    chain = np.zeros(1, dtype=np.int64)
    while len(chain) < n:
        chain = np.concatenate((chain, jump[chain]))
        jump = jump[jump]
    return chain[:n]


class _Walk:
    """Per-frame metadata of the open block, filled by a walker."""

    def __init__(self, cap: int):
        self.cap = cap
        self.off = np.zeros(cap, np.int64)
        self.snap = np.zeros(cap, np.uint32)
        self.len = np.zeros(cap, np.uint32)
        self.ts = np.zeros(cap, np.int64)
        self.pkttype = np.zeros(cap, np.uint8)
        # with PACKET_VNET_HDR (fwd_plan_offloads): what each frame needs (a copy, its
        # checksum finished, segmentation), the buffers it becomes (0: dropped) and
        # the longest of them
        self.work = np.zeros(cap, np.uint8)
        self.segs = np.zeros(cap, np.uint32)
        self.seglen = np.zeros(cap, np.uint32)


# ---------------------------------------------------------------- the port


def _fail(iface: str, what: str, e: OSError) -> AfPacketError:
    if e.errno in (errno.EPERM, errno.EACCES):
        cause = "permission denied: needs root or CAP_NET_RAW"
    elif e.errno in (errno.ENODEV, errno.ENXIO):
        cause = "no such interface"
    else:
        cause = e.strerror or str(e)
    return AfPacketError(e.errno, f"AF_PACKET port {iface!r}: {what}: {cause}")


class AfPacketPort:
    """One worker's RX and TX on one interface.

    `fanout_group`: the port's PACKET_FANOUT id (same for every worker of the port,
    unique per port within the network namespace); None: no fanout (one worker).
    RX ring: `ring_blocks` blocks of `block_size` bytes (a page multiple). `rx_ring`
    "v2" (the default with the C helper): slots of `rx_frame_size` bytes, each handed
    to us as its frame is written; "v3": a block is handed to us when full or after
    `retire_ms` (latency bound at low rates, in jiffies).
    `frame_size` is the TX ring's slot size (frames longer than frame_size - 32, - 42
    with `tx_vnet`, are not sent) and `tx_frames` its number of slots: 4096, two
    bursts of 2048 in flight (lab, 64-byte UDP, one worker at batch 2048: 0.65 µs of
    router CPU a packet against 0.90 with 1024 slots, where a burst found the ring
    full, and 0.84 at batch 1024; perf/results/afpacket-2026-12-07-vm.json).
    `qdisc_bypass`: PACKET_QDISC_BYPASS on the TX socket (measured: 0.94 against 1.20
    µs a packet without). `tx_vnet`: a virtio_net_hdr on TX frames (fwd_tx_fill).
    `fanout_mode`: "hash" (PACKET_FANOUT_HASH, one flow one worker), or "lb", "cpu",
    "qm" to compare. `busy_poll_us`: SO_BUSY_POLL on the RX socket (veth has no NAPI
    to poll unless GRO or XDP is on: no effect measured, off).
    `walker`, `copier`, `tx_mode`: the implementations compared by the benchmark;
    the defaults are the fastest measured, with a fallback if the C helper is absent.
    `receive=False` opens the TX side only (the slow path's sender: it must not take
    frames from the workers' fanout groups).
    `offloads`: receive with PACKET_VNET_HDR and finish what the kernel left to a
    device (needs the C walker and copier; see "Offloads" in the module docstring).
    """

    def __init__(self, iface: str, *, fanout_group: int | None = None,
                 ring_blocks: int | None = None,
                 block_size: int = 1 << 18, frame_size: int = 2048, tx_frames: int = 4096,
                 retire_ms: int = 1, promisc: bool = True, walker: str | None = None,
                 copier: str | None = None, tx_mode: str | None = None,
                 receive: bool = True, offloads: bool = True, fanout_mode: str = "hash",
                 qdisc_bypass: bool = True, busy_poll_us: int = 0, tx_vnet: bool = True,
                 rx_ring: str | None = None, rx_frame_size: int = 2048):
        self.iface = iface
        needs_c = walker in (None, "c") or copier in (None, "c") or tx_mode in (
            None, "ring", "sendmmsg")
        self._lib = c_helper() if needs_c else None
        self.walker = walker or ("c" if self._lib else "numpy")
        self.copier = copier or ("c" if self._lib else "numpy")
        self.tx_mode = tx_mode or ("ring" if self._lib else "ring-numpy")
        for value, allowed in ((self.walker, WALKERS), (self.copier, COPIERS),
                               (self.tx_mode, TX_MODES)):
            if value not in allowed:
                raise ValueError(f"{value!r}: expected one of {allowed}")
        if self._lib is None and ("c" in (self.walker, self.copier)
                                  or self.tx_mode in ("ring", "sendmmsg")):
            raise AfPacketError(errno.ENOSYS, f"AF_PACKET port {iface!r}: the C helper "
                                f"is not available: {c_helper_error()}")
        if block_size % mmap.PAGESIZE or frame_size % TPACKET_ALIGNMENT:
            raise ValueError("block_size must be a page multiple, frame_size a multiple of 16")
        self.block_size = block_size
        self.frame_size = frame_size
        self.tx_frames = tx_frames
        self.offloads = offloads and self.walker == "c" and self.copier == "c"
        if rx_ring not in (None, "v2", "v3"):
            raise ValueError(f"rx_ring {rx_ring!r}: expected 'v2' or 'v3'")
        # V2 is walked by the C helper only
        self.rx_ring = (rx_ring or "v2") if self.walker == "c" else "v3"
        if ring_blocks is None:  # V2: 8,192 slots of 2 KiB; V3: 8 MiB of packed frames
            ring_blocks = 64 if self.rx_ring == "v2" else 32
        self.ring_blocks = ring_blocks
        if self.rx_ring == "v2" and (block_size % rx_frame_size or rx_frame_size % 16):
            raise ValueError("rx_frame_size must divide block_size, and be a multiple of 16")
        self.rx_frame_size = rx_frame_size
        self.tx_vnet = tx_vnet and self.tx_mode == "ring"
        # per EngineMemory: C pointers to its pool arrays (see _pool_ptrs)
        self.restore: Callable[[], None] | None = None  # undoes disable_lro at close
        self._mem_ptrs: weakref.WeakKeyDictionary[EngineMemory, tuple[int, tuple[Any, ...]]] = (
            weakref.WeakKeyDictionary())
        self.rx_sock: socket.socket | None = None
        self.tx_sock: socket.socket | None = None
        self._rx_map: mmap.mmap | None = None
        self._tx_map: mmap.mmap | None = None
        # drops we make ourselves (the kernel's own are in stats())
        self.rx_oversize = 0  # longer than a pool buffer, or truncated by the ring
        self.rx_outgoing = 0  # our own transmissions seen anyway (kernel < 4.20)
        self.rx_offload_bad = 0  # a GSO type we cannot segment, or a bad csum_start
        self.rx_segmented = 0  # GSO frames received (each became several buffers)
        self.rx_csum_done = 0  # CHECKSUM_PARTIAL frames whose L4 checksum we filled in
        self.tx_full = 0  # frames refused because every TX slot was in flight
        self.tx_oversize = 0  # frames longer than a TX ring slot (skipped)
        try:
            self.ifindex = socket.if_nametoindex(iface)
        except OSError as e:
            raise AfPacketError(errno.ENODEV, f"AF_PACKET port {iface!r}: no such interface"
                                ) from e
        try:
            if receive:
                self._open_rx(fanout_group, retire_ms, promisc, FANOUT_MODES[fanout_mode],
                              busy_poll_us)
            self._open_tx(qdisc_bypass)
        except BaseException:
            self.close()
            raise

    # -- setup

    def _setsockopt(self, sock: socket.socket, opt: int, value: bytes | int, what: str) -> None:
        try:
            sock.setsockopt(SOL_PACKET, opt, value)
        except OSError as e:
            raise _fail(self.iface, what, e) from e

    def _open_rx(self, fanout_group: int | None, retire_ms: int, promisc: bool,
                 fanout_mode: int, busy_poll_us: int) -> None:
        iface = self.iface
        try:
            # protocol 0 until the ring exists and we are bound: nothing is queued
            # from other interfaces in between
            self.rx_sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
        except OSError as e:
            raise _fail(iface, "opening a packet socket", e) from e
        s = self.rx_sock
        v2 = self.rx_ring == "v2"
        self._setsockopt(s, PACKET_VERSION, TPACKET_V2 if v2 else TPACKET_V3,
                         f"PACKET_VERSION {self.rx_ring.upper()}")
        if self.offloads:  # before the ring: the kernel refuses it after (EBUSY)
            self._setsockopt(s, PACKET_VNET_HDR, 1, "PACKET_VNET_HDR")
        if v2:
            # tpacket_req: block_size, block_nr, frame_size, frame_nr; one frame a slot
            self._slots = self.ring_blocks * (self.block_size // self.rx_frame_size)
            req = struct.pack("<4I", self.block_size, self.ring_blocks, self.rx_frame_size,
                              self._slots)
            if self.offloads:
                # a GSO super-frame does not fit a slot: the kernel then queues it
                # whole on the socket too and marks the slot TP_STATUS_COPY
                # (tpacket_rcv's copy_thresh), room for a few dozen of them
                self._setsockopt(s, PACKET_COPY_THRESH, 1, "PACKET_COPY_THRESH")
                try:
                    s.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, COPY_RCVBUF)
                except OSError:  # without CAP_NET_ADMIN: what rmem_max allows
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, COPY_RCVBUF)
                self._scratch = np.zeros(COPY_SCRATCH, np.uint8)
                self._scratch_ptr = (None if self._lib is None
                                     else self._lib.ffi.from_buffer("uint8_t[]", self._scratch))
        else:
            # tpacket_req3: block_size, block_nr, frame_size, frame_nr, retire_blk_tov,
            # sizeof_priv, feature_req_word. V3 ignores frame_size for RX except that
            # frame_nr must equal block_nr * (block_size / frame_size).
            self._slots = self.ring_blocks
            fs = TPACKET_ALIGNMENT * 128
            req = struct.pack("<7I", self.block_size, self.ring_blocks, fs,
                              self.ring_blocks * (self.block_size // fs), retire_ms, 0, 0)
        self._setsockopt(s, PACKET_RX_RING, req, "PACKET_RX_RING")
        size = self.block_size * self.ring_blocks
        try:
            self._rx_map = mmap.mmap(s.fileno(), size, mmap.MAP_SHARED,
                                     mmap.PROT_READ | mmap.PROT_WRITE)
        except OSError as e:
            raise _fail(iface, "mapping the RX ring", e) from e
        self._r8 = np.frombuffer(self._rx_map, dtype=np.uint8)
        self._r32 = self._r8.view("<u4")
        # what says the next block (V3) or frame (V2) is ours: its status word
        self._block_status = (self._r32[:: self.rx_frame_size // 4] if v2 else
                              self._r32[BLK_STATUS // 4 :: self.block_size // 4])
        try:
            s.bind((iface, ETH_P_ALL))
        except OSError as e:
            raise _fail(iface, "binding the RX socket", e) from e
        try:
            s.setsockopt(SOL_PACKET, PACKET_IGNORE_OUTGOING, 1)
            self.ignores_outgoing = True
        except OSError:  # before Linux 4.20: filter on sll_pkttype instead
            self.ignores_outgoing = False
        if promisc:
            # packet_mreq: ifindex, type, alen, address[8]; dropped when the socket closes
            mreq = struct.pack("<iHH8s", self.ifindex, PACKET_MR_PROMISC, 0, b"")
            self._setsockopt(s, PACKET_ADD_MEMBERSHIP, mreq, "promiscuous mode")
        if fanout_group is not None:
            # no DEFRAG flag (the engine reassembles) and no ROLLOVER (it would move a
            # flow to another worker): all fragments of a datagram hash alike anyway
            # (the flow dissector ignores ports on fragments)
            self._setsockopt(s, PACKET_FANOUT,
                             (fanout_group & 0xFFFF) | (fanout_mode << 16),
                             f"joining fanout group {fanout_group} (one id per port: is "
                             "another interface or socket type using it?)")
        if busy_poll_us:
            s.setsockopt(socket.SOL_SOCKET, SO_BUSY_POLL, busy_poll_us)
        self._cur = 0  # block (V3) or first slot (V2) we read next
        self._walk = _Walk(self.block_size // 64)
        self._n = 0  # frames of the open block (0: no block open)
        self._pos = 0  # frames of it already taken
        self._busy = 0  # frames of it that need more than a copy (offloads)
        self._seg = 0  # segments of frame _pos already taken (a GSO frame split)
        self._lib_ring = (None if self._lib is None
                          else self._lib.ffi.from_buffer("uint8_t[]", self._r8))
        self._src = self._lib_ring  # where the open run's frames are: the ring or _scratch
        # C pointers to arrays that live as long as we do: computing one from numpy
        # (`.ctypes.data`) costs more than the C call it is passed to
        self._wp: dict[str, Any] = {}
        if self._lib is not None:
            ffi, w = self._lib.ffi, self._walk
            self._wp = {"off": _ptr(ffi, w.off, "int64_t *"),
                        "snap": _ptr(ffi, w.snap, "uint32_t *"),
                        "len": _ptr(ffi, w.len, "uint32_t *"),
                        "ts": _ptr(ffi, w.ts, "int64_t *"),
                        "pkttype": _ptr(ffi, w.pkttype, "uint8_t *"),
                        "work": _ptr(ffi, w.work, "uint8_t *"),
                        "segs": _ptr(ffi, w.segs, "uint32_t *"),
                        "seglen": _ptr(ffi, w.seglen, "uint32_t *")}

    def _open_tx(self, qdisc_bypass: bool = True) -> None:
        iface = self.iface
        try:
            # protocol 0: this socket is never hooked into receive, so never reads back
            self.tx_sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
        except OSError as e:
            raise _fail(iface, "opening a packet socket", e) from e
        s = self.tx_sock
        if qdisc_bypass:
            self._setsockopt(s, PACKET_QDISC_BYPASS, 1, "PACKET_QDISC_BYPASS")
        if self.tx_mode in ("ring", "ring-numpy"):
            self._setsockopt(s, PACKET_VERSION, TPACKET_V2, "PACKET_VERSION V2")
            if self.tx_vnet:  # before the ring, as on RX
                self._setsockopt(s, PACKET_VNET_HDR, 1, "PACKET_VNET_HDR")
            # a malformed frame is skipped (its slot freed) instead of stopping the ring
            self._setsockopt(s, PACKET_LOSS, 1, "PACKET_LOSS")
            per_block = max(1, mmap.PAGESIZE // self.frame_size)
            bs = per_block * self.frame_size
            if bs % mmap.PAGESIZE:
                bs = self.frame_size  # frame_size larger than a page: one per block
                per_block = 1
                if bs % mmap.PAGESIZE:
                    raise ValueError("frame_size must divide or be a multiple of the page size")
            blocks = -(-self.tx_frames // per_block)
            self.tx_frames = blocks * per_block
            req = struct.pack("<4I", bs, blocks, self.frame_size, self.tx_frames)
            self._setsockopt(s, PACKET_TX_RING, req, "PACKET_TX_RING")
            try:
                self._tx_map = mmap.mmap(s.fileno(), bs * blocks, mmap.MAP_SHARED,
                                         mmap.PROT_READ | mmap.PROT_WRITE)
            except OSError as e:
                raise _fail(iface, "mapping the TX ring", e) from e
            self._t8 = np.frombuffer(self._tx_map, dtype=np.uint8)
            self._t32 = self._t8.view("<u4")
            # [head slot, frames skipped as too long], shared with the C helper
            self._tx_state = np.zeros(2, np.uint32)
            self._tx_cstate = (None if self._lib is None
                               else _ptr(self._lib.ffi, self._tx_state, "uint32_t *"))
            self._lib_tx = (None if self._lib is None
                            else self._lib.ffi.from_buffer("uint8_t[]", self._t8))
        try:
            s.bind((iface, 0))
        except OSError as e:
            raise _fail(iface, "binding the TX socket", e) from e

    # -- receive

    def fileno(self) -> int:
        """The RX socket: poll() it for POLLIN to sleep until a block is ready."""
        assert self.rx_sock is not None
        return self.rx_sock.fileno()

    def wait(self, timeout_ms: int) -> bool:
        """Sleep until a block is ready to read (True) or `timeout_ms` passes (False).
        An idle worker calls this instead of spinning; a V2 frame is handed over as it
        is written, a V3 block at the latest `retire_ms` after its first frame."""
        if self._pos < self._n or self._ready():
            return True
        if timeout_ms <= 0:  # the status word said it all: no poll() to ask again
            return False
        p = select.poll()
        p.register(self.fileno(), select.POLLIN)
        return bool(p.poll(timeout_ms)) and self._ready()

    def _ready(self) -> bool:
        return bool(self._block_status[self._cur] & TP_STATUS_USER)

    def _open_block(self) -> bool:
        """Walk the next block if the kernel has handed it over; False if not."""
        if self.rx_ring == "v2":
            return self._open_v2()
        while True:
            base = self._cur * self.block_size
            w = self._walk
            if self.walker == "c":
                wp = self._wp
                n = self._lib.lib.fwd_walk_block(self._lib_ring + base, base, w.cap, wp["off"],
                                                 wp["snap"], wp["len"], wp["ts"], wp["pkttype"])
                if n < 0:
                    return False
                if self.offloads and n:
                    self._busy = self._lib.lib.fwd_plan_offloads(
                        self._lib_ring, wp["off"], wp["len"], wp["snap"], n, wp["work"],
                        wp["segs"], wp["seglen"])
            else:
                if not self._block_status[self._cur] & TP_STATUS_USER:
                    return False
                if self.walker == "numpy":
                    n = walk_numpy(self._r32, self._r8, base, w, self._rx_map)
                else:
                    n = walk_python(self._rx_map, base, w)
            self._n, self._pos = n, 0
            if n:
                return True
            self._release_block()  # a block can retire empty (timeout)

    def _open_v2(self) -> bool:
        """V2: the run of frames ready from slot `_cur` on, as a block; a frame the
        kernel queued whole on the socket (TP_STATUS_COPY) is received into `_scratch`
        and makes a run of its own, finished by the offload path."""
        lib, w, wp = self._lib.lib, self._walk, self._wp
        n = lib.fwd_walk_v2(self._lib_ring, self.rx_frame_size, self._slots, self._cur,
                            w.cap, wp["off"], wp["snap"], wp["len"], wp["ts"], wp["pkttype"])
        if n == 0:
            return False
        if n < 0:
            n = 1
            try:
                got = self.rx_sock.recv_into(self._scratch, len(self._scratch),
                                             socket.MSG_DONTWAIT)
            except OSError:
                got = 0
            w.off[0] = VNET_HDR_LEN
            if got > VNET_HDR_LEN:
                w.len[0] = w.snap[0] = got - VNET_HDR_LEN
            else:  # not there after all: dropped as a truncated frame
                w.len[0], w.snap[0] = 1, 0
            self._src = self._scratch_ptr
            self._busy = max(1, lib.fwd_plan_offloads(
                self._src, wp["off"], wp["len"], wp["snap"], 1, wp["work"], wp["segs"],
                wp["seglen"]))
        elif self.offloads:
            self._busy = lib.fwd_plan_offloads(self._lib_ring, wp["off"], wp["len"],
                                               wp["snap"], n, wp["work"], wp["segs"],
                                               wp["seglen"])
        self._n, self._pos = n, 0
        return True

    def _release_block(self) -> None:
        if self.rx_ring == "v2":
            self._lib.lib.fwd_release_v2(self._lib_ring, self.rx_frame_size, self._slots,
                                         self._cur, self._n)
            self._cur = (self._cur + self._n) % self._slots
            self._n = self._pos = self._busy = self._seg = 0
            self._src = self._lib_ring
            return
        if self._lib is not None:
            self._lib.lib.fwd_release_block(self._lib_ring + self._cur * self.block_size)
        else:
            self._block_status[self._cur] = TP_STATUS_KERNEL
        self._cur = (self._cur + 1) % self.ring_blocks
        self._n = self._pos = self._busy = self._seg = 0

    def rx_burst(self, buffers: Buffers, mem: EngineMemory, port: int,
                 max_frames: int) -> np.ndarray:
        """Up to `max_frames` received frames, copied into buffers allocated from
        `buffers`, with `mem.length/port/ts` set (ts: the kernel's receive time, ns).
        Returns their indices in arrival order. Frames stay in the ring when the pool
        is empty (the kernel drops and counts once the ring is full)."""
        got: list[np.ndarray] = []
        want = max_frames
        bufsize = mem.geometry.bufsize
        w = self._walk
        while want > 0:
            if self._pos == self._n and not self._open_block():
                break
            if self._busy:  # frames to segment or checksum in this block
                idx = self._rx_offloaded(buffers, mem, port, want)
                if idx is None:  # pool empty
                    break
                if len(idx):
                    got.append(idx)
                    want -= len(idx)
                if self._pos == self._n:
                    self._release_block()
                continue
            start = self._pos
            stop = min(self._n, start + want)
            oversize = (w.len[start:stop] > bufsize) | (w.snap[start:stop] < w.len[start:stop])
            outgoing = None if self.ignores_outgoing else w.pkttype[start:stop] == PACKET_OUTGOING
            bad = oversize if outgoing is None else oversize | outgoing
            keep = np.flatnonzero(~bad) if bad.any() else None
            k = stop - start if keep is None else len(keep)
            idx = buffers.alloc(k) if k else np.zeros(0, np.uint32)
            if len(idx) < k:  # pool short: take what fits, leave the rest in the ring
                if len(idx) == 0:
                    break
                k = len(idx)
                stop = start + (k if keep is None else int(keep[k - 1]) + 1)
            if keep is not None:
                self.rx_oversize += int(np.count_nonzero(oversize[: stop - start]))
                if outgoing is not None:
                    self.rx_outgoing += int(np.count_nonzero(outgoing[: stop - start]))
                sel: slice | np.ndarray = start + keep[:k]
            else:
                sel = slice(start, stop)
            if k:
                self._copy_in(mem, idx, sel, port)
                got.append(idx)
                want -= k
            self._pos = stop
            if stop == self._n:
                self._release_block()  # give the block back as soon as it is copied
        if not got:
            return np.zeros(0, np.uint32)
        return got[0] if len(got) == 1 else np.concatenate(got)

    def _rx_offloaded(self, buffers: Buffers, mem: EngineMemory, port: int,
                      want: int) -> np.ndarray | None:
        """rx_burst's step in a block with frames to finish: up to `want` buffers from
        the frames at `_pos` on, GSO frames cut into their segments and partial
        checksums filled in (fwd_copy_offloaded). A GSO frame may be split across
        bursts (`_seg`: its segments already taken). None: the pool is empty."""
        w, wp, ffi = self._walk, self._wp, self._lib.ffi
        start = self._pos
        stop = min(self._n, start + want)  # each frame kept gives at least a buffer
        segs = w.segs[start:stop]
        oversize = (w.seglen[start:stop] > mem.geometry.bufsize) | (
            w.snap[start:stop] < w.len[start:stop])
        bad = oversize | (segs == 0)
        outgoing = None if self.ignores_outgoing else w.pkttype[start:stop] == PACKET_OUTGOING
        if outgoing is not None:
            bad |= outgoing
        take = np.where(bad, 0, segs).astype(np.uint32)
        take[0] -= self._seg
        cum = np.cumsum(take)
        idx = buffers.alloc(min(int(cum[-1]), want))
        k = len(idx)
        if k == 0 and cum[-1] > 0:
            return None
        m = int(np.searchsorted(cum, k, side="right"))  # frames wholly taken
        partial = k - (int(cum[m - 1]) if m else 0)  # segments of frame m taken now
        n = m + 1 if partial else m
        if partial:
            take[m] = partial
        if n:
            data, pool_len, pool_port, pool_ts = self._pool_ptrs(mem)
            done = self._lib.lib.fwd_copy_offloaded(
                self._src, wp["off"] + start, wp["len"] + start, wp["ts"] + start,
                wp["work"] + start, ffi.from_buffer("uint32_t[]", take), self._seg, n, data,
                mem.geometry.bufsize, ffi.from_buffer("uint32_t[]", idx), pool_len,
                pool_port, pool_ts, port)
            assert done == k, (done, k)
        whole = slice(0, m)
        self.rx_oversize += int(np.count_nonzero(oversize[whole]))
        self.rx_offload_bad += int(np.count_nonzero((segs[whole] == 0) & ~oversize[whole]))
        if outgoing is not None:
            self.rx_outgoing += int(np.count_nonzero(outgoing[whole] & ~oversize[whole]))
        work = w.work[start : start + m][~bad[whole]]
        self.rx_segmented += int(np.count_nonzero(work >= 2))
        self.rx_csum_done += int(np.count_nonzero(work == 1))
        self._seg = (self._seg if m == 0 else 0) + partial if partial else 0
        self._pos = start + m
        return idx

    def _pool_ptrs(self, mem: EngineMemory) -> tuple[Any, ...]:
        """C pointers to the pool's data, length, port and ts arrays (cached per
        EngineMemory; recomputed, so failing, once `mem.close()` dropped its views)."""
        cached = self._mem_ptrs.get(mem)
        if cached is not None and cached[0] == id(mem.data):
            return cached[1]
        if mem.data is None:
            raise ValueError("the EngineMemory is closed")
        ffi = self._lib.ffi
        ptrs = (_ptr(ffi, mem.data, "uint8_t *"), _ptr(ffi, mem.length, "uint32_t *"),
                _ptr(ffi, mem.port, "uint16_t *"), _ptr(ffi, mem.ts, "int64_t *"))
        self._mem_ptrs[mem] = (id(mem.data), ptrs)
        return ptrs

    def _copy_in(self, mem: EngineMemory, idx: np.ndarray, sel: slice | np.ndarray,
                 port: int) -> None:
        w = self._walk
        if self.copier == "c":
            ffi = self._lib.ffi
            if isinstance(sel, slice):  # the common case: a run of the walk arrays
                wp = self._wp
                off, length, ts = wp["off"] + sel.start, wp["len"] + sel.start, (
                    wp["ts"] + sel.start)
            else:
                arrays = (w.off[sel], w.len[sel], w.ts[sel])
                off, length, ts = (ffi.from_buffer(t, a) for t, a in zip(
                    ("int64_t[]", "uint32_t[]", "int64_t[]"), arrays, strict=True))
            data, pool_len, pool_port, pool_ts = self._pool_ptrs(mem)
            self._lib.lib.fwd_copy_rows(
                self._lib_ring, off, length, ts, len(idx), data, mem.geometry.bufsize,
                ffi.from_buffer("uint32_t[]", np.ascontiguousarray(idx, dtype=np.uint32)),
                pool_len, pool_port, pool_ts, port)
            return
        off, length, ts = w.off[sel], w.len[sel], w.ts[sel]
        mem.length[idx] = length
        mem.port[idx] = port
        mem.ts[idx] = ts
        # fixed-width rows as pcap_port.gather_frames; bytes past a frame's end are
        # don't-care, but must stay inside the mapping
        width = int(length.max())
        cols = off[:, None] + np.arange(width)
        if int(off.max()) + width > len(self._r8):
            np.minimum(cols, len(self._r8) - 1, out=cols)
        mem.data[idx, :width] = self._r8[cols]

    # -- transmit

    def tx_burst(self, mem: EngineMemory, idx: np.ndarray) -> int:
        """Send the frames in buffers `idx` (in order); returns how many were taken,
        a prefix of `idx`: sent, or skipped when longer than a TX ring slot (counted
        in stats()["tx_oversize"]). The rest found every slot in flight (counted in
        "tx_full"). The caller frees all of `idx` afterwards (the frames are copied
        into the kernel by then) and may retry or drop the rest."""
        n = len(idx)
        if n == 0:
            return 0
        mode = self.tx_mode
        if mode == "send":  # the baseline: one syscall per frame
            sock = self.tx_sock
            sent = 0
            for i, ln in zip(idx.tolist(), mem.length[idx].tolist(), strict=True):
                try:
                    sock.send(mem.data[i, :ln], socket.MSG_DONTWAIT)
                except BlockingIOError:
                    break
                sent += 1
            self.tx_full += n - sent
            return sent
        if mode == "ring-numpy":
            placed = self._tx_fill_numpy(mem, idx)
        else:
            ffi, lib = self._lib.ffi, self._lib.lib
            data, pool_len, _, _ = self._pool_ptrs(mem)
            cidx = ffi.from_buffer("uint32_t[]", np.ascontiguousarray(idx, dtype=np.uint32))
            if mode == "sendmmsg":
                r = lib.fwd_sendmmsg(self.tx_sock.fileno(), data, mem.geometry.bufsize,
                                     pool_len, cidx, n)
                if r < 0:
                    if -r not in (errno.EAGAIN, errno.ENOBUFS):
                        raise _fail(self.iface, "sendmmsg", OSError(-r, os.strerror(-r)))
                    r = 0
                self.tx_full += n - r
                return r
            before = int(self._tx_state[1])
            placed = lib.fwd_tx_fill(self._lib_tx, self.frame_size, self.tx_frames,
                                     self._tx_cstate, data, mem.geometry.bufsize, pool_len,
                                     cidx, n, self._tx_cstate + 1, int(self.tx_vnet))
            self.tx_oversize += int(self._tx_state[1]) - before
        # flush even when nothing new fit: a send() that stopped part way (ENOBUFS,
        # a busy driver) leaves slots in SEND_REQUEST, which only another send() moves
        # on; without it a full ring would never drain and the port would stall
        self._flush()
        self.tx_full += n - placed
        return placed

    def _tx_fill_numpy(self, mem: EngineMemory, idx: np.ndarray) -> int:
        head = int(self._tx_state[0])
        length = mem.length[idx]
        n = min(len(idx), self.tx_frames)
        fits = length[:n] <= self.frame_size - TX_DATA_OFF
        slots = (head + np.cumsum(fits) - 1) % self.tx_frames
        words = slots * (self.frame_size // 4)
        busy = fits & ((self._t32[words] & (TP_STATUS_SEND_REQUEST | TP_STATUS_SENDING)) != 0)
        if busy.any():
            n = int(np.argmax(busy))
        self.tx_oversize += int(n - np.count_nonzero(fits[:n]))  # skipped: taken, not sent
        take = np.flatnonzero(fits[:n])
        if len(take):
            slots, words, length, rows = slots[take], words[take], length[take], idx[take]
            width = int(length.max())
            cols = (slots * self.frame_size + TX_DATA_OFF)[:, None] + np.arange(width)
            self._t8[cols] = mem.data[rows, :width]
            self._t32[words + T2_LEN // 4] = length
            self._t32[words] = TP_STATUS_SEND_REQUEST  # after the data (x86: stores ordered)
            self._tx_state[0] = (head + len(take)) % self.tx_frames
        return n

    def _flush(self) -> None:
        # one syscall sends every SEND_REQUEST slot; MSG_DONTWAIT: do not wait for the
        # driver to finish, the slots come back (AVAILABLE) as their skbs are freed
        try:
            self.tx_sock.send(b"", socket.MSG_DONTWAIT)
        except (BlockingIOError, InterruptedError):
            pass
        except OSError as e:
            if e.errno != errno.ENOBUFS:
                raise _fail(self.iface, "flushing the TX ring", e) from e

    # -- the rest

    def stats(self) -> dict[str, int]:
        """Kernel counters since the last call (tpacket_stats_v3: packets queued to the
        ring, drops for want of a free block, ring freezes) plus ours (cumulative)."""
        out = {"rx_oversize": self.rx_oversize, "rx_outgoing": self.rx_outgoing,
               "rx_offload_bad": self.rx_offload_bad, "rx_segmented": self.rx_segmented,
               "rx_csum_done": self.rx_csum_done,
               "tx_full": self.tx_full, "tx_oversize": self.tx_oversize}
        if self.rx_sock is not None:
            raw = self.rx_sock.getsockopt(SOL_PACKET, PACKET_STATISTICS, 12)
            # tpacket_stats_v3 (V2's tpacket_stats has no freeze count)
            packets, drops, freezes = struct.unpack("<3I", raw.ljust(12, b"\0"))
            out["kernel_packets"], out["kernel_drops"], out["kernel_freezes"] = (
                packets, drops, freezes)
        return out

    def close(self) -> None:
        """Close both sockets and unmap the rings (promiscuity and fanout membership
        go away with the socket). Safe to call twice."""
        # views first, or mmap.close() raises BufferError
        self._src = None
        for attr in ("_r8", "_r32", "_block_status", "_t8", "_t32", "_lib_ring", "_lib_tx",
                     "_scratch_ptr"):
            if hasattr(self, attr):
                if attr.startswith("_lib") and getattr(self, attr) is not None and self._lib:
                    self._lib.ffi.release(getattr(self, attr))
                setattr(self, attr, None)
        for attr in ("_rx_map", "_tx_map"):
            m = getattr(self, attr, None)
            if m is not None:
                try:
                    m.close()
                except BufferError:  # a caller still holds a view: unmapped when freed
                    pass
                setattr(self, attr, None)
        if self.restore is not None:
            self.restore()
            self.restore = None
        for attr in ("rx_sock", "tx_sock"):
            s = getattr(self, attr, None)
            if s is not None:
                s.close()
                setattr(self, attr, None)

    def __enter__(self) -> AfPacketPort:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def tx_frame_size(bufsize: int) -> int:
    """A TX ring slot that holds any pool buffer after the 32-byte slot header and a
    virtio_net_hdr: 2 KiB for 2,006-byte buffers, whole pages beyond (the ring wants a
    page multiple then)."""
    need = bufsize + TX_DATA_OFF + VNET_HDR_LEN
    return 2048 if need <= 2048 else -(-need // 4096) * 4096


def rx_frame_size(mtu: int) -> int:
    """A V2 RX slot for the port's longest frame (a VLAN tag included) after the
    kernel's tpacket2_hdr, sockaddr_ll and virtio_net_hdr (76 bytes before the frame):
    2 KiB for MTU 1500; a power of two, so that slots tile the ring's blocks."""
    need = 96 + mtu + 18
    return 1 << max(11, (need - 1).bit_length())


def fanout_group(engine_name: str, port: int) -> int:
    """The port's PACKET_FANOUT id: the same in every worker of this engine, different
    for each port and (by the engine's unique segment name) from other engines."""
    return (zlib.crc32(engine_name.encode()) + port) & 0xFFFF


# <linux/sockios.h>, <linux/ethtool.h>: the legacy flags word (ethtool_value)
SIOCETHTOOL = 0x8946
ETHTOOL_GFLAGS, ETHTOOL_SFLAGS = 0x25, 0x26
ETH_FLAG_LRO = 1 << 15


def ethtool_flags(iface: str, value: int | None = None) -> int:
    """The interface's ethtool flags (ETHTOOL_GFLAGS), or set them (ETHTOOL_SFLAGS)
    and return what was asked; OSError if the driver has no such ioctl."""
    cmd = ETHTOOL_GFLAGS if value is None else ETHTOOL_SFLAGS
    data = ctypes.create_string_buffer(struct.pack("<II", cmd, value or 0))
    ifreq = struct.pack("16sP", iface.encode()[:15], ctypes.addressof(data)).ljust(40, b"\0")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        fcntl.ioctl(s.fileno(), SIOCETHTOOL, ifreq)
    return struct.unpack("<II", data.raw[:8])[1] if value is None else value


def disable_lro(iface: str) -> Callable[[], None] | None:
    """Large receive offload off, as the kernel turns it off on an interface that
    forwards (dev_disable_lro from devinet's forwarding sysctl): a NIC's LRO merges
    frames without keeping what tells how to cut them back (flags, options), unlike
    GRO, whose super-frames the driver segments (PACKET_VNET_HDR). Says so on stderr
    in one line; returns what turns it back on (None: it was not on)."""
    try:
        flags = ethtool_flags(iface)
    except OSError:  # no ETHTOOL_GFLAGS (virtual devices without ethtool_ops): no LRO
        return None
    if not flags & ETH_FLAG_LRO:
        return None
    try:
        ethtool_flags(iface, flags & ~ETH_FLAG_LRO)
    except OSError as e:
        print(f"fwd: {iface}: large-receive-offload is on and could not be turned off "
              f"({e.strerror}): merged frames will be cut at their gso_size", file=sys.stderr)
        return None
    print(f"fwd: {iface}: large-receive-offload turned off while the engine runs "
          "(the kernel does the same on a forwarding interface)", file=sys.stderr)

    def restore() -> None:
        try:
            ethtool_flags(iface, ethtool_flags(iface) | ETH_FLAG_LRO)
        except OSError:
            pass  # the interface is gone, or changed hands: nothing to give back
    return restore


def open_queue(port: PortConfig, index: int, mem: EngineMemory, *, receive: bool,
               queue: int | None) -> AfPacketPort:
    """This process's queue on an afpacket port: a worker's joins the port's fanout
    group, which spreads flows as a NIC's RSS would; a send-only one joins none."""
    g = mem.geometry
    knobs = bench_knobs(os.environ.get("FWD_AFPACKET", ""))
    fanout = knobs.pop("fanout", "hash")
    if fanout == "none" and g.nworkers > 1:
        raise ValueError("FWD_AFPACKET fanout=none: every worker would get every frame")
    group = fanout_group(g.name, index) if receive and fanout != "none" else None
    opened = AfPacketPort(port.iface or "", receive=receive, fanout_group=group,
                          fanout_mode="hash" if fanout == "none" else str(fanout),
                          frame_size=tx_frame_size(g.bufsize),
                          rx_frame_size=rx_frame_size(port.mtu), **knobs)
    if queue is None and not receive:  # the control process's queue: once per port,
        opened.restore = disable_lro(opened.iface)  # opened before any worker's
    return opened


# FWD_AFPACKET="name=value,...": the driver's options the benchmark compares
# (perf/bench_lab.py engine modes with "+name=value"), not a user setting
_KNOBS = {"fanout": str, "offloads": int, "qdisc_bypass": int, "busy_poll_us": int,
          "tx_vnet": int, "tx_mode": str, "rx_ring": str,
          "retire_ms": int, "ring_blocks": int, "block_size": int, "tx_frames": int}


def bench_knobs(text: str) -> dict[str, Any]:
    """Parse FWD_AFPACKET ("fanout=cpu,busy_poll_us=50") into AfPacketPort options."""
    out: dict[str, Any] = {}
    for item in filter(None, (x.strip() for x in text.split(","))):
        name, _, value = item.partition("=")
        if name not in _KNOBS:
            raise ValueError(f"FWD_AFPACKET: unknown option {name!r} (one of "
                             f"{', '.join(_KNOBS)})")
        out[name] = _KNOBS[name](value)
    for flag in ("offloads", "qdisc_bypass", "tx_vnet"):
        if flag in out:
            out[flag] = bool(out[flag])
    return out
