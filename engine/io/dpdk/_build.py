"""Build the project's cffi binding to the system DPDK (API mode).

API mode, not ABI mode: `rte_eth_rx_burst`/`rte_eth_tx_burst` and the mbuf helpers are
static inline functions in DPDK's headers, so only a compiled C module can call them.
The module is compiled against `pkg-config --cflags --libs libdpdk` (passed through
unchanged: `-include rte_config.h` is two tokens and must stay a pair) plus
`-DALLOW_EXPERIMENTAL_API`, into a per-user cache directory keyed by the DPDK version
and a hash of the source, so nothing built ever lands in the repository and a DPDK
upgrade or a source change rebuilds by itself.
"""

from __future__ import annotations

import fcntl
import hashlib
import importlib.util
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from types import ModuleType

MODULE = "_fwd_dpdk"
MISSING_HINT = "apt-get install dpdk-dev libdpdk-dev pkg-config"

# Shared by the C source and the cdef: what fwd_port_setup reports.
PORT_INFO = """
struct fwd_port_info {
    uint16_t port_id;
    uint16_t max_rx_queues;
    uint16_t max_tx_queues;
    uint16_t mtu;
    uint64_t flow_type_rss_offloads;
    uint64_t rss_hf;            /* RSS hash functions in use (0: no RSS) */
    uint64_t rx_offload_capa;
    uint64_t rx_offloads;       /* RX offloads in use (asked & capable) */
    uint64_t tx_offload_capa;
    uint8_t mac[6];
    int mac_set;                /* 1: MAC set as asked; 0: not asked; <0: -errno */
    int promiscuous;
    int socket_id;
    char driver_name[64];
};
"""

# Shared too: the single-process I/O agent's view of the engine's rings and counters
# (fwd_agent_pass), filled in by engine/io/dpdk/engine.py `SingleProcessAgent`.
AGENT = """
struct fwd_ring {               /* an engine/shm/ring.py Ring: SPSC, counters only grow */
    uint64_t *head;             /* the consumer's: released after the slots are read */
    uint64_t *tail;             /* the producer's: published after the slots are written */
    uint32_t *slots;
    uint64_t size;              /* a power of two */
};
struct fwd_agent {
    struct fwd_zc *zc;          /* the I/O partition's mbufs (zero copy) */
    struct rte_mempool *copy_mp; /* mbufs for rows of other partitions (the slow path's) */
    uint32_t nports, nworkers;
    uint32_t burst;             /* [engine] batch */
    uint32_t max_rx;            /* frames taken per port per round: 4 bursts */
    uint16_t *port_id;          /* [nports] ethdev of port p (its queue 0) */
    uint64_t **rx_dropped;      /* [nports] DpdkPort's counters: too long for a row */
    uint64_t **rx_copied;       /* [nports] ... frames not in one of our mbufs */
    uint32_t *pool_len;         /* mem.length */
    uint16_t *pool_port;        /* mem.port */
    int64_t *pool_ts;           /* mem.ts */
    struct fwd_ring *rx;        /* [p * nworkers + w]: rx.<p>.<w>, we produce */
    struct fwd_ring *tx;        /* [p * nworkers + w]: tx.<p>.<w>, we consume */
    struct fwd_ring *ret;       /* [nret]: ret.<a>.<us>, drops coming home (Buffers.reclaim) */
    uint32_t nret;
    uint64_t *port_counters;    /* port_counters[us]: [nports][ncols] */
    uint32_t ncols, col_rx_packets, col_rx_bytes, col_tx_packets, col_tx_bytes, col_rx_drops;
    uint64_t *rx_frames;        /* counters[us][MISC_BASE + rx_frames] */
    uint64_t *tx_frames;        /* ... tx_frames */
    const uint32_t *rss_table;  /* [12][256] Toeplitz windows (engine/io/rss.py _tables) */
    const uint32_t *reta;       /* [reta_size] queue of hash & (reta_size - 1) */
    uint32_t reta_size;
    uint32_t *rows;             /* [max_rx] scratch: one port's received rows */
    uint8_t *queue;             /* [max_rx] scratch: their worker */
    uint32_t *to_free;          /* [to_free_cap] sent rows of other partitions, for Python */
    uint32_t to_free_cap, nfree;
};
"""

# What Python sees. Structs are declared partially (`...;`): cffi takes their real
# layout from the headers at compile time.
CDEF = """
struct rte_mempool;

struct rte_eth_stats {
    uint64_t ipackets; uint64_t opackets; uint64_t ibytes; uint64_t obytes;
    uint64_t imissed; uint64_t ierrors; uint64_t oerrors; uint64_t rx_nombuf;
    uint64_t q_ipackets[...]; uint64_t q_opackets[...];
    uint64_t q_ibytes[...]; uint64_t q_obytes[...]; uint64_t q_errors[...];
    ...;
};
struct rte_eth_xstat_name { char name[...]; ...; };
struct rte_eth_xstat { uint64_t id; uint64_t value; ...; };
""" + PORT_INFO + AGENT + """

static const uint64_t FWD_RSS_IPV4;
static const uint64_t FWD_RX_OFFLOAD_CHECKSUM;
static const int FWD_RTE_VERSION_MAJOR;
static const int FWD_RTE_VERSION_MINOR;
static const int FWD_RTE_VERSION_PATCH;
static const int FWD_XSTATS_NAME_SIZE;
static const int RTE_PROC_PRIMARY;
static const int RTE_PROC_SECONDARY;

int fwd_eal_init(int argc, char **argv);
int rte_eal_cleanup(void);
int rte_eal_process_type(void);
int fwd_errno(void);
const char *rte_strerror(int errnum);
const char *rte_version(void);

struct rte_mempool *fwd_pool_create(const char *name, unsigned int n, unsigned int cache,
                                    unsigned int dataroom, int socket_id);
struct rte_mempool *rte_mempool_lookup(const char *name);
void rte_mempool_free(struct rte_mempool *mp);
unsigned int rte_mempool_avail_count(const struct rte_mempool *mp);

int rte_dev_probe(const char *devargs);
int rte_eth_dev_get_port_by_name(const char *name, uint16_t *port_id);
uint16_t rte_eth_dev_count_avail(void);
int fwd_port_setup(uint16_t port, uint16_t nrxq, uint16_t ntxq, uint16_t nrxd,
                   uint16_t ntxd, struct rte_mempool *mp, const uint8_t *mac, uint16_t mtu,
                   uint64_t rss_hf, uint64_t rx_offloads, int promiscuous,
                   struct fwd_port_info *info);
int fwd_port_info(uint16_t port, struct fwd_port_info *info);
int rte_eth_dev_stop(uint16_t port_id);
int rte_eth_dev_close(uint16_t port_id);

int rte_eth_stats_get(uint16_t port_id, struct rte_eth_stats *stats);
int rte_eth_stats_reset(uint16_t port_id);
int rte_eth_xstats_get_names(uint16_t port_id, struct rte_eth_xstat_name *names,
                             unsigned int size);
int rte_eth_xstats_get(uint16_t port_id, struct rte_eth_xstat *xstats, unsigned int n);

int fwd_rx_burst(uint16_t port, uint16_t queue, uint8_t *pool_base, uint32_t bufsize,
                 const uint32_t *idx, uint32_t *len, uint32_t n, uint64_t *dropped);
int fwd_tx_burst(uint16_t port, uint16_t queue, struct rte_mempool *mp,
                 const uint8_t *pool_base, uint32_t bufsize, const uint32_t *idx,
                 const uint32_t *len, uint32_t n);
int fwd_rx_burst_pool(uint16_t port, uint16_t queue, uint8_t *pool_base, uint32_t bufsize,
                      uint32_t *pool_len, uint16_t *pool_port, uint16_t port_index,
                      const uint32_t *idx, uint32_t n, uint64_t *dropped);
int fwd_tx_burst_pool(uint16_t port, uint16_t queue, struct rte_mempool *mp,
                      const uint8_t *pool_base, uint32_t bufsize, const uint32_t *pool_len,
                      const uint32_t *idx, uint32_t n);

struct fwd_zc;
static const int FWD_MBUF_HEADROOM;
struct fwd_zc *fwd_zc_create(const char *name, uint8_t *base, uint32_t bufsize,
                             uint32_t first, uint32_t nrows, uint32_t *stack,
                             uint64_t *depth, uint8_t *held, int socket_id);
struct rte_mempool *fwd_zc_mempool(struct fwd_zc *zc);
uint64_t fwd_zc_bad_puts(struct fwd_zc *zc);
int fwd_rx_burst_zc(uint16_t port, uint16_t queue, struct fwd_zc *zc, uint32_t *pool_len,
                    uint16_t *pool_port, uint16_t port_index, uint32_t *idx, uint32_t n,
                    uint64_t *dropped, uint64_t *copied);
int fwd_tx_burst_zc(uint16_t port, uint16_t queue, struct fwd_zc *zc,
                    struct rte_mempool *copy_mp, const uint32_t *pool_len,
                    const uint32_t *idx, uint32_t n, uint32_t *to_free, uint32_t *nfree);
int64_t fwd_agent_pass(struct fwd_agent *a, int receive, uint32_t rounds);
"""

SOURCE = r"""
#include <errno.h>
#include <string.h>
#include <rte_common.h>
#include <rte_version.h>
#include <rte_errno.h>
#include <rte_eal.h>
#include <rte_dev.h>
#include <rte_mempool.h>
#include <rte_mbuf.h>
#include <rte_ethdev.h>
""" + PORT_INFO + r"""
static const uint64_t FWD_RSS_IPV4 = RTE_ETH_RSS_IPV4 | RTE_ETH_RSS_FRAG_IPV4 |
    RTE_ETH_RSS_NONFRAG_IPV4_TCP | RTE_ETH_RSS_NONFRAG_IPV4_UDP |
    RTE_ETH_RSS_NONFRAG_IPV4_OTHER;
static const uint64_t FWD_RX_OFFLOAD_CHECKSUM = RTE_ETH_RX_OFFLOAD_CHECKSUM;
static const int FWD_RTE_VERSION_MAJOR = RTE_VER_YEAR;
static const int FWD_RTE_VERSION_MINOR = RTE_VER_MONTH;
static const int FWD_RTE_VERSION_PATCH = RTE_VER_MINOR;
static const int FWD_XSTATS_NAME_SIZE = RTE_ETH_XSTATS_NAME_SIZE;

/* The standard Microsoft Toeplitz key, the one engine/io/rss.py uses for pcap ports,
   so a flow lands on the same queue whichever driver spreads it. */
static uint8_t fwd_rss_key[40] = {
    0x6d, 0x5a, 0x56, 0xda, 0x25, 0x5b, 0x0e, 0xc2, 0x41, 0x67, 0x25, 0x3d, 0x43, 0xa3,
    0x8f, 0xb0, 0xd0, 0xca, 0x2b, 0xcb, 0xae, 0x7b, 0x30, 0xb4, 0x77, 0xcb, 0x2d, 0xa3,
    0x80, 0x30, 0xf2, 0x0c, 0x6a, 0x42, 0xb7, 0x3b, 0xbe, 0xac, 0x01, 0xfa,
};

#define FWD_CHUNK 64

static int fwd_errno(void) { return rte_errno; }

static int fwd_eal_init(int argc, char **argv)
{
    /* rte_eal_init permutes argv; hand it a copy of the pointer array so the
       caller's array (kept alive by Python) stays as it was. */
    char *copy[256];
    int i;
    if (argc > 255)
        return -E2BIG;
    for (i = 0; i < argc; i++)
        copy[i] = argv[i];
    copy[argc] = NULL;
    return rte_eal_init(argc, copy);
}

static struct rte_mempool *fwd_pool_create(const char *name, unsigned int n,
                                           unsigned int cache, unsigned int dataroom,
                                           int socket_id)
{
    return rte_pktmbuf_pool_create(name, n, cache, 0,
                                   (uint16_t)(dataroom + RTE_PKTMBUF_HEADROOM), socket_id);
}

static int fwd_port_info(uint16_t port, struct fwd_port_info *info)
{
    struct rte_eth_dev_info dev;
    struct rte_ether_addr addr;
    int ret = rte_eth_dev_info_get(port, &dev);
    if (ret != 0)
        return ret;
    info->port_id = port;
    info->max_rx_queues = dev.max_rx_queues;
    info->max_tx_queues = dev.max_tx_queues;
    info->flow_type_rss_offloads = dev.flow_type_rss_offloads;
    info->rx_offload_capa = dev.rx_offload_capa;
    info->tx_offload_capa = dev.tx_offload_capa;
    info->socket_id = rte_eth_dev_socket_id(port);
    snprintf(info->driver_name, sizeof(info->driver_name), "%s",
             dev.driver_name ? dev.driver_name : "");
    if (rte_eth_macaddr_get(port, &addr) == 0)
        memcpy(info->mac, addr.addr_bytes, 6);
    if (rte_eth_dev_get_mtu(port, &info->mtu) != 0)
        info->mtu = 0;
    info->promiscuous = rte_eth_promiscuous_get(port);
    return 0;
}

/* Configure nrxq RX and ntxq TX queues (the engine: one pair per worker plus a TX
   queue of the slow path's own), RSS and offloads limited to what the device can do
   (vdevs have neither RSS nor checksum offloads; asking for them fails the configure),
   MAC and MTU as asked, and start the port. Returns 0 or -errno. */
static int fwd_port_setup(uint16_t port, uint16_t nrxq, uint16_t ntxq, uint16_t nrxd,
                          uint16_t ntxd, struct rte_mempool *mp, const uint8_t *mac, uint16_t mtu,
                          uint64_t rss_hf, uint64_t rx_offloads, int promiscuous,
                          struct fwd_port_info *info)
{
    struct rte_eth_dev_info dev;
    struct rte_eth_conf conf;
    int ret, socket;
    uint16_t q;

    memset(info, 0, sizeof(*info));
    ret = rte_eth_dev_info_get(port, &dev);
    if (ret != 0)
        return ret;
    if (nrxq == 0 || ntxq == 0 || nrxq > dev.max_rx_queues || ntxq > dev.max_tx_queues)
        return -EINVAL;

    memset(&conf, 0, sizeof(conf));
    rss_hf &= dev.flow_type_rss_offloads;
    if (nrxq > 1 && rss_hf != 0) {
        conf.rxmode.mq_mode = RTE_ETH_MQ_RX_RSS;
        conf.rx_adv_conf.rss_conf.rss_hf = rss_hf;
        if (dev.hash_key_size == sizeof(fwd_rss_key)) {
            conf.rx_adv_conf.rss_conf.rss_key = fwd_rss_key;
            conf.rx_adv_conf.rss_conf.rss_key_len = sizeof(fwd_rss_key);
        }
    } else {
        rss_hf = 0;
    }
    rx_offloads &= dev.rx_offload_capa;
    conf.rxmode.offloads = rx_offloads;
    if (mtu != 0)
        conf.rxmode.mtu = mtu;

    ret = rte_eth_dev_configure(port, nrxq, ntxq, &conf);
    if (ret != 0)
        return ret;
    ret = rte_eth_dev_adjust_nb_rx_tx_desc(port, &nrxd, &ntxd);
    if (ret != 0)
        return ret;
    socket = rte_eth_dev_socket_id(port);
    if (socket < 0)
        socket = (int)rte_socket_id();
    for (q = 0; q < nrxq; q++) {
        ret = rte_eth_rx_queue_setup(port, q, nrxd, socket, NULL, mp);
        if (ret != 0)
            return ret;
    }
    for (q = 0; q < ntxq; q++) {
        ret = rte_eth_tx_queue_setup(port, q, ntxd, socket, NULL);
        if (ret != 0)
            return ret;
    }
    if (mac != NULL) {
        struct rte_ether_addr addr;
        memcpy(addr.addr_bytes, mac, 6);
        ret = rte_eth_dev_default_mac_addr_set(port, &addr);
        /* some vdevs cannot change their MAC; the engine filters on its own MAC
           anyway, so report it instead of failing */
        info->mac_set = ret == 0 ? 1 : (ret < 0 ? ret : -ret);
    }
    ret = rte_eth_dev_start(port);
    if (ret != 0)
        return ret;
    if (promiscuous)
        rte_eth_promiscuous_enable(port);  /* not all vdevs can; the engine filters L2 */
    int mac_set = info->mac_set;
    ret = fwd_port_info(port, info);
    info->mac_set = mac_set;
    info->rss_hf = rss_hf;
    info->rx_offloads = rx_offloads;
    return ret;
}

/* Receive up to n frames into the pool rows idx[0..], one frame per row, and their
   lengths into len[]. Frames that do not fit a row (bufsize) are dropped and counted
   in *dropped, so rows are used densely: the frames are in idx[0..return). At most
   n frames are taken from the device, so n rows always suffice. */
static inline int fwd_rx_core(uint16_t port, uint16_t queue, uint8_t *pool_base,
                              uint32_t bufsize, const uint32_t *idx, uint32_t *len,
                              uint32_t *pool_len, uint16_t *pool_port, uint16_t port_index,
                              uint32_t n, uint64_t *dropped)
{
    struct rte_mbuf *pkts[FWD_CHUNK];
    uint32_t k = 0, seen = 0;
    uint64_t drops = 0;

    /* bounded by frames taken from the device, not rows filled: a queue of nothing
       but oversize frames must not keep us here */
    while (seen < n) {
        uint16_t want = (uint16_t)RTE_MIN((uint32_t)FWD_CHUNK, n - seen);
        uint16_t got = rte_eth_rx_burst(port, queue, pkts, want);
        uint16_t i;
        seen += got;
        for (i = 0; i < got; i++) {
            struct rte_mbuf *m = pkts[i];
            uint32_t plen = rte_pktmbuf_pkt_len(m);
            if (plen > bufsize) {
                drops++;
            } else {
                uint8_t *dst = pool_base + (size_t)idx[k] * bufsize;
                if (m->nb_segs == 1) {
                    rte_memcpy(dst, rte_pktmbuf_mtod(m, const void *), plen);
                } else {
                    const struct rte_mbuf *s;
                    uint32_t off = 0;
                    for (s = m; s != NULL; s = s->next) {
                        rte_memcpy(dst + off, rte_pktmbuf_mtod(s, const void *),
                                   s->data_len);
                        off += s->data_len;
                    }
                }
                if (pool_len != NULL) {
                    pool_len[idx[k]] = plen;
                    pool_port[idx[k]] = port_index;
                } else {
                    len[k] = plen;
                }
                k++;
            }
            rte_pktmbuf_free(m);
        }
        if (got < want)
            break;  /* queue drained: do not spin on an empty queue */
    }
    *dropped += drops;
    return (int)k;
}

static int fwd_rx_burst(uint16_t port, uint16_t queue, uint8_t *pool_base, uint32_t bufsize,
                        const uint32_t *idx, uint32_t *len, uint32_t n, uint64_t *dropped)
{
    return fwd_rx_core(port, queue, pool_base, bufsize, idx, len, NULL, NULL, 0, n, dropped);
}

/* The same, writing each frame's length and ingress port straight into the engine's
   per-buffer arrays (mem.length, mem.port): no numpy scatter after the call. */
static int fwd_rx_burst_pool(uint16_t port, uint16_t queue, uint8_t *pool_base,
                             uint32_t bufsize, uint32_t *pool_len, uint16_t *pool_port,
                             uint16_t port_index, const uint32_t *idx, uint32_t n,
                             uint64_t *dropped)
{
    return fwd_rx_core(port, queue, pool_base, bufsize, idx, NULL, pool_len, pool_port,
                       port_index, n, dropped);
}

/* Send the pool rows idx[0..n) of lengths len[]: copy each into a fresh mbuf, hand
   them to the device, free what it did not take. Returns how many were sent (the
   first ones, in order); -ENOMEM if not even one mbuf could be had. The rows are
   only read: the caller may release them at once. */
static inline int fwd_tx_core(uint16_t port, uint16_t queue, struct rte_mempool *mp,
                              const uint8_t *pool_base, uint32_t bufsize,
                              const uint32_t *idx, const uint32_t *len,
                              const uint32_t *pool_len, uint32_t n)
{
    struct rte_mbuf *pkts[FWD_CHUNK];
    uint32_t done = 0, sent = 0;

    while (done < n) {
        uint16_t want = (uint16_t)RTE_MIN((uint32_t)FWD_CHUNK, n - done);
        uint16_t i, ok = 0, took;
        if (rte_pktmbuf_alloc_bulk(mp, pkts, want) != 0)
            return sent == 0 && done == 0 ? -ENOMEM : (int)sent;
        for (i = 0; i < want; i++) {
            uint32_t plen = pool_len != NULL ? pool_len[idx[done + i]] : len[done + i];
            char *dst = plen <= bufsize ? rte_pktmbuf_append(pkts[i], (uint16_t)plen) : NULL;
            if (dst == NULL) {
                /* larger than an mbuf: cannot happen with the pool Dpdk creates */
                rte_pktmbuf_free(pkts[i]);
                continue;
            }
            rte_memcpy(dst, pool_base + (size_t)idx[done + i] * bufsize, plen);
            pkts[ok++] = pkts[i];
        }
        took = rte_eth_tx_burst(port, queue, pkts, ok);
        sent += took;
        done += want;
        if (took < ok) {
            rte_pktmbuf_free_bulk(pkts + took, ok - took);
            break;  /* the queue is full: the rest would not go either */
        }
    }
    return (int)sent;
}

static int fwd_tx_burst(uint16_t port, uint16_t queue, struct rte_mempool *mp,
                        const uint8_t *pool_base, uint32_t bufsize, const uint32_t *idx,
                        const uint32_t *len, uint32_t n)
{
    return fwd_tx_core(port, queue, mp, pool_base, bufsize, idx, len, NULL, n);
}

/* The same, with each frame's length read from the engine's mem.length. */
static int fwd_tx_burst_pool(uint16_t port, uint16_t queue, struct rte_mempool *mp,
                             const uint8_t *pool_base, uint32_t bufsize,
                             const uint32_t *pool_len, const uint32_t *idx, uint32_t n)
{
    return fwd_tx_core(port, queue, mp, pool_base, bufsize, idx, NULL, pool_len, n);
}
"""


# Zero copy (used in single-process mode, see engine/io/dpdk/engine.py): the mbufs of
# the RX queues are the engine's pool rows themselves.
SOURCE += r"""
#include <stdlib.h>

static const int FWD_MBUF_HEADROOM = RTE_PKTMBUF_HEADROOM;

/* One agent's pool partition as a DPDK mempool of mbufs with pinned external buffers
   (as rte_pktmbuf_pool_create_extbuf makes them), with one difference: its free list
   is the engine's own free stack of that partition (engine/shm/pool.py: pool.free
   slots, depth in state[owner, ST_FREE]), through the mempool driver below. So a row
   is free in one place only, whoever frees it: the engine (Buffers.free) or DPDK
   (rte_pktmbuf_free after a transmission). The mbuf of row r has its data room at
   row r: buf_addr = row - RTE_PKTMBUF_HEADROOM, so that a PMD writing at the usual
   data_off (the headroom) writes at byte 0 of the row, where the engine expects a
   frame. The headroom is the tail of row r-1 (for the first row, the pad the engine
   layout keeps before the pool, pool.headroom); no PMD writes there on RX, and the
   data room ends 128 bytes before the row does (frames up to bufsize - 128 bytes). */
struct fwd_zc {
    struct rte_mempool *mp;
    uint8_t *base;            /* mem.data: row r starts at base + r * bufsize */
    uint32_t bufsize;
    uint32_t first, nrows;    /* the partition: rows [first, first + nrows) */
    uint32_t *stack;          /* its free stack (absolute row numbers) ... */
    uint64_t *depth;          /* ... and the stack's depth */
    uint8_t *held;            /* held[r - first]: 1 while DPDK has row r (exactly once) */
    struct rte_mbuf **mbuf;   /* mbuf[r - first]: the mbuf of row r */
    uint64_t bad_puts;        /* rows given back that DPDK did not have: a bug if ever */
    int populating;
};

static inline uint32_t fwd_zc_row(const struct fwd_zc *zc, const struct rte_mbuf *m)
{
    return (uint32_t)(((const uint8_t *)m->buf_addr + RTE_PKTMBUF_HEADROOM - zc->base)
                      / zc->bufsize);
}

/* The mempool driver (struct rte_mempool_ops) over the engine's stack. No per-lcore
   cache (cache_size 0): every get and put reaches these, so the stack is exact. Only
   the control process calls them (single-process mode), as it is the stack's owner. */
static int fwd_zc_alloc(struct rte_mempool *mp)
{
    mp->pool_data = mp->pool_config;
    return 0;
}

static void fwd_zc_free(struct rte_mempool *mp)
{
    (void)mp;
}

/* put: DPDK is done with these mbufs (sent, or freed by a PMD) */
static int fwd_zc_enqueue(struct rte_mempool *mp, void * const *objs, unsigned int n)
{
    struct fwd_zc *zc = mp->pool_data;
    uint64_t depth = *zc->depth;
    unsigned int i;

    if (zc->populating)
        return 0;  /* rte_mempool_populate_default: the rows are on the stack already */
    for (i = 0; i < n; i++) {
        uint32_t r = fwd_zc_row(zc, objs[i]) - zc->first;
        if (!zc->held[r]) {  /* never pushed twice: that would hand one row out twice */
            zc->bad_puts++;
            continue;
        }
        zc->held[r] = 0;
        zc->stack[depth++] = r + zc->first;
    }
    *zc->depth = depth;  /* the slots first, then the depth that publishes them (pool.py) */
    return 0;
}

/* get: all n or none, from the top of the stack, as Buffers.alloc takes them */
static int fwd_zc_dequeue(struct rte_mempool *mp, void **objs, unsigned int n)
{
    struct fwd_zc *zc = mp->pool_data;
    uint64_t depth = *zc->depth;
    unsigned int i;

    if (depth < n)
        return -ENOBUFS;
    for (i = 0; i < n; i++) {
        uint32_t r = zc->stack[depth - 1 - i] - zc->first;
        zc->held[r] = 1;
        objs[i] = zc->mbuf[r];
    }
    *zc->depth = depth - n;
    return 0;
}

static unsigned int fwd_zc_count(const struct rte_mempool *mp)
{
    const struct fwd_zc *zc = mp->pool_data;
    return (unsigned int)*zc->depth;
}

static const struct rte_mempool_ops fwd_zc_ops = {
    .name = "fwd_pool_rows",
    .alloc = fwd_zc_alloc,
    .free = fwd_zc_free,
    .enqueue = fwd_zc_enqueue,
    .dequeue = fwd_zc_dequeue,
    .get_count = fwd_zc_count,
};

/* As rte_mbuf.c's rte_pktmbuf_free_pinned_extmem (static there): called when the last
   mbuf attached to a pinned buffer lets go of it. */
static void fwd_zc_free_pinned(void *addr, void *opaque)
{
    struct rte_mbuf *m = opaque;
    (void)addr;
    rte_mbuf_ext_refcnt_set(m->shinfo, 1);
    m->ol_flags = RTE_MBUF_F_EXTERNAL;
    m->next = NULL;
    m->nb_segs = 1;
    rte_mbuf_raw_free(m);
}

/* As rte_mbuf.c's __rte_pktmbuf_init_extmem, with the buffer of object i at row
   first + i (minus the headroom), and the row -> mbuf table filled. */
static void fwd_zc_init_mbuf(struct rte_mempool *mp, void *arg, void *obj, unsigned int i)
{
    struct fwd_zc *zc = arg;
    struct rte_mbuf *m = obj;
    struct rte_mbuf_ext_shared_info *shinfo;

    memset(m, 0, sizeof(*m));
    m->priv_size = 0;
    m->buf_len = (uint16_t)zc->bufsize;
    m->buf_addr = zc->base + (size_t)(zc->first + i) * zc->bufsize - RTE_PKTMBUF_HEADROOM;
    rte_mbuf_iova_set(m, RTE_BAD_IOVA);  /* vdevs only: no device DMAs into the rows */
    m->data_off = RTE_PKTMBUF_HEADROOM;
    m->pool = mp;
    m->nb_segs = 1;
    m->port = RTE_MBUF_PORT_INVALID;
    m->ol_flags = RTE_MBUF_F_EXTERNAL;
    rte_mbuf_refcnt_set(m, 1);
    m->next = NULL;
    shinfo = RTE_PTR_ADD(m, sizeof(struct rte_mbuf));
    m->shinfo = shinfo;
    shinfo->free_cb = fwd_zc_free_pinned;
    shinfo->fcb_opaque = m;
    rte_mbuf_ext_refcnt_set(shinfo, 1);
    zc->mbuf[i] = m;
}

/* The mempool over rows [first, first + nrows) of the pool at base; NULL and rte_errno
   on failure. The rows' current state stays as it is: free rows are on the stack,
   the others are the engine's. */
static struct fwd_zc *fwd_zc_create(const char *name, uint8_t *base, uint32_t bufsize,
                                    uint32_t first, uint32_t nrows, uint32_t *stack,
                                    uint64_t *depth, uint8_t *held, int socket_id)
{
    static int registered;
    struct rte_pktmbuf_pool_private priv;
    struct fwd_zc *zc;
    struct rte_mempool *mp;
    int ret;

    if (bufsize <= RTE_PKTMBUF_HEADROOM || bufsize > UINT16_MAX || nrows == 0) {
        rte_errno = EINVAL;
        return NULL;
    }
    /* registered here, after EAL loaded its drivers, not by a constructor at load:
       mempool drivers are numbered in registration order, and that order must not
       change in processes that never use this one */
    if (!registered) {
        ret = rte_mempool_register_ops(&fwd_zc_ops);
        if (ret < 0) {
            rte_errno = -ret;
            return NULL;
        }
        registered = 1;
    }
    zc = calloc(1, sizeof(*zc));
    if (zc == NULL || (zc->mbuf = calloc(nrows, sizeof(*zc->mbuf))) == NULL) {
        free(zc);
        rte_errno = ENOMEM;
        return NULL;
    }
    zc->base = base;
    zc->bufsize = bufsize;
    zc->first = first;
    zc->nrows = nrows;
    zc->stack = stack;
    zc->depth = depth;
    zc->held = held;
    /* an mbuf header and its shared info; the data is the row */
    mp = rte_mempool_create_empty(name, nrows, sizeof(struct rte_mbuf) +
                                  sizeof(struct rte_mbuf_ext_shared_info), 0,
                                  sizeof(struct rte_pktmbuf_pool_private), socket_id, 0);
    if (mp == NULL)
        goto fail;
    ret = rte_mempool_set_ops_byname(mp, fwd_zc_ops.name, zc);
    if (ret != 0)
        goto fail_errno;
    memset(&priv, 0, sizeof(priv));
    priv.mbuf_data_room_size = (uint16_t)bufsize;
    priv.flags = RTE_PKTMBUF_POOL_F_PINNED_EXT_BUF;
    rte_pktmbuf_pool_init(mp, &priv);
    zc->populating = 1;
    ret = rte_mempool_populate_default(mp);
    zc->populating = 0;
    if (ret < 0)
        goto fail_errno;
    if (mp->populated_size != nrows) {
        ret = -ENOMEM;
        goto fail_errno;
    }
    rte_mempool_obj_iter(mp, fwd_zc_init_mbuf, zc);
    zc->mp = mp;
    return zc;
fail_errno:
    rte_errno = -ret;
fail:
    if (mp != NULL)
        rte_mempool_free(mp);
    free(zc->mbuf);
    free(zc);
    return NULL;
}

static struct rte_mempool *fwd_zc_mempool(struct fwd_zc *zc)
{
    return zc->mp;
}

static uint64_t fwd_zc_bad_puts(struct fwd_zc *zc)
{
    return zc->bad_puts;
}

/* Receive up to n frames; idx[] gets their rows. A frame in an mbuf of ours, whole and
   at the start of its row (what every vdev PMD does), is taken as it is: its row is
   the engine's from now on. Anything else (a frame in several segments, an mbuf of
   another pool, a frame not where expected) is copied into a row from the stack and
   its mbufs freed, as fwd_rx_core does; counted in *copied. */
static int fwd_rx_burst_zc(uint16_t port, uint16_t queue, struct fwd_zc *zc,
                           uint32_t *pool_len, uint16_t *pool_port, uint16_t port_index,
                           uint32_t *idx, uint32_t n, uint64_t *dropped, uint64_t *copied)
{
    struct rte_mbuf *pkts[FWD_CHUNK];
    uint32_t k = 0, seen = 0;

    while (seen < n) {
        uint16_t want = (uint16_t)RTE_MIN((uint32_t)FWD_CHUNK, n - seen);
        uint16_t got = rte_eth_rx_burst(port, queue, pkts, want);
        uint16_t i;
        seen += got;
        for (i = 0; i < got; i++) {
            struct rte_mbuf *m = pkts[i];
            uint32_t plen = rte_pktmbuf_pkt_len(m);
            uint32_t r;
            if (m->pool == zc->mp && m->nb_segs == 1 && m->data_off == RTE_PKTMBUF_HEADROOM
                    && rte_mbuf_refcnt_read(m) == 1
                    && rte_mbuf_ext_refcnt_read(m->shinfo) == 1) {
                r = fwd_zc_row(zc, m);
                zc->held[r - zc->first] = 0;  /* the engine's now; the mbuf stays with it */
            } else {
                const struct rte_mbuf *s;
                uint32_t off = 0;
                uint64_t depth = *zc->depth;
                if (plen > zc->bufsize || depth == 0) {
                    (*dropped)++;  /* too long for a row, or no free row */
                    rte_pktmbuf_free(m);
                    continue;
                }
                r = zc->stack[depth - 1];
                *zc->depth = depth - 1;
                for (s = m; s != NULL; s = s->next) {
                    rte_memcpy(zc->base + (size_t)r * zc->bufsize + off,
                               rte_pktmbuf_mtod(s, const void *), s->data_len);
                    off += s->data_len;
                }
                rte_pktmbuf_free(m);
                (*copied)++;
            }
            pool_len[r] = plen;
            pool_port[r] = port_index;
            idx[k++] = r;
        }
        if (got < want)
            break;  /* queue drained: do not spin on an empty queue */
    }
    return (int)k;
}

/* Send rows idx[0..n), lengths from pool_len. A row of ours that fits its mbuf's data
   room goes as its own mbuf, reset as rte_pktmbuf_reset would and pointing at the row:
   once the device takes it, the row is DPDK's, and comes back to the stack when the
   device frees the mbuf. Other rows (another agent's partition: the slow path's, or
   longer than the data room) are copied into an mbuf of copy_mp, as fwd_tx_core does;
   those sent are listed in to_free[0..*nfree) for the caller to free. Returns how many
   went, the first ones in order; the rest stay the caller's, untouched. */
static int fwd_tx_burst_zc(uint16_t port, uint16_t queue, struct fwd_zc *zc,
                           struct rte_mempool *copy_mp, const uint32_t *pool_len,
                           const uint32_t *idx, uint32_t n, uint32_t *to_free,
                           uint32_t *nfree)
{
    struct rte_mbuf *pkts[FWD_CHUNK];
    uint8_t copy[FWD_CHUNK];
    uint32_t done = 0, sent = 0, room = zc->bufsize - RTE_PKTMBUF_HEADROOM;

    *nfree = 0;
    while (done < n) {
        uint16_t want = (uint16_t)RTE_MIN((uint32_t)FWD_CHUNK, n - done);
        uint16_t i, ok, took;
        for (ok = 0; ok < want; ok++) {
            uint32_t r = idx[done + ok];
            uint32_t plen = pool_len[r];
            struct rte_mbuf *m;
            if (r - zc->first < zc->nrows && plen <= room) {
                m = zc->mbuf[r - zc->first];
                m->data_off = RTE_PKTMBUF_HEADROOM;
                m->data_len = (uint16_t)plen;
                m->pkt_len = plen;
                m->nb_segs = 1;
                m->next = NULL;
                m->ol_flags = RTE_MBUF_F_EXTERNAL;
                m->packet_type = 0;
                m->vlan_tci = 0;
                m->vlan_tci_outer = 0;
                m->port = RTE_MBUF_PORT_INVALID;
                zc->held[r - zc->first] = 1;  /* before the device may free it */
                copy[ok] = 0;
            } else {
                char *dst;
                m = plen <= zc->bufsize ? rte_pktmbuf_alloc(copy_mp) : NULL;
                if (m == NULL)
                    break;  /* no mbuf: what is prepared goes, the rest waits */
                dst = rte_pktmbuf_append(m, (uint16_t)plen);
                if (dst == NULL) {
                    rte_pktmbuf_free(m);
                    break;
                }
                rte_memcpy(dst, zc->base + (size_t)r * zc->bufsize, plen);
                copy[ok] = 1;
            }
            pkts[ok] = m;
        }
        took = ok ? rte_eth_tx_burst(port, queue, pkts, ok) : 0;
        for (i = 0; i < took; i++)
            if (copy[i])
                to_free[(*nfree)++] = idx[done + i];
        for (i = took; i < ok; i++) {
            if (copy[i])
                rte_pktmbuf_free(pkts[i]);
            else
                zc->held[idx[done + i] - zc->first] = 0;  /* not taken: still the caller's */
        }
        sent += took;
        done += ok;
        if (took < want)
            break;  /* the queue is full, or no mbuf: the rest would not go either */
    }
    return (int)sent;
}
"""


# The single-process I/O agent's pass (engine/io/dpdk/engine.py SingleProcessAgent):
# what SingleProcessAgent.receive and Sender.send did in Python per burst, in C per
# pass, over the engine's own shared-memory rings and counters.
SOURCE += AGENT + r"""
#include <time.h>

static inline uint64_t fwd_ring_count(const struct fwd_ring *r)
{
    return __atomic_load_n(r->tail, __ATOMIC_ACQUIRE) - __atomic_load_n(r->head, __ATOMIC_ACQUIRE);
}

/* Ring.enqueue of n rows that fit (room was checked): the slots, then the tail that
   publishes them (a release store, as rte_ring's SP enqueue). */
static inline void fwd_ring_put(struct fwd_ring *r, const uint32_t *rows, uint32_t n)
{
    uint64_t tail = *r->tail, mask = r->size - 1;
    uint32_t i;
    for (i = 0; i < n; i++)
        r->slots[(tail + i) & mask] = rows[i];
    __atomic_store_n(r->tail, tail + n, __ATOMIC_RELEASE);
}

/* Buffers.reclaim: the rows other agents gave back to us (a worker's drops) onto our
   free stack, slots first, then the depth that publishes them. Returns how many. */
static uint32_t fwd_agent_reclaim(struct fwd_agent *a)
{
    struct fwd_zc *zc = a->zc;
    uint32_t k, got = 0;
    for (k = 0; k < a->nret; k++) {
        struct fwd_ring *r = &a->ret[k];
        uint64_t head = *r->head, tail = __atomic_load_n(r->tail, __ATOMIC_ACQUIRE);
        uint64_t depth = *zc->depth, mask = r->size - 1, i;
        if (tail == head)
            continue;
        for (i = head; i < tail; i++)
            zc->stack[depth + (i - head)] = r->slots[i & mask];
        __atomic_store_n(zc->depth, depth + (tail - head), __ATOMIC_RELEASE);
        __atomic_store_n(r->head, tail, __ATOMIC_RELEASE);
        got += (uint32_t)(tail - head);
    }
    return got;
}

/* engine/io/rss.py `_queues`: the worker of each frame by the Toeplitz hash of its
   IPv4 addresses (and TCP/UDP ports when not a fragment), as a NIC's RSS would. */
static void fwd_agent_rss(const struct fwd_agent *a, const uint8_t *base, uint32_t bufsize,
                          const uint32_t *rows, uint32_t n, uint8_t *queue)
{
    const uint32_t (*t)[256] = (const uint32_t (*)[256])a->rss_table;
    uint32_t i, j;
    for (i = 0; i < n; i++) {
        const uint8_t *f = base + (size_t)rows[i] * bufsize;
        uint32_t len = a->pool_len[rows[i]], h = 0;
        if (len >= 14 + 20 && f[12] == 0x08 && f[13] == 0x00 && (f[14] >> 4) == 4
                && (f[14] & 0x0F) >= 5) {
            const uint8_t *ip = f + 14;
            uint32_t l4 = 14 + 4 * (ip[0] & 0x0F);
            for (j = 0; j < 8; j++)  /* source and destination addresses */
                h ^= t[j][ip[12 + j]];
            /* TCP or UDP, not a fragment (MF clear, offset 0), ports present */
            if ((ip[9] == 6 || ip[9] == 17) && (((ip[6] << 8) | ip[7]) & 0x3FFF) == 0
                    && len >= l4 + 4)
                for (j = 0; j < 4; j++)
                    h ^= t[8 + j][f[l4 + j]];
        }
        queue[i] = (uint8_t)a->reta[h & (a->reta_size - 1)];
    }
}

/* Frames every worker can take whichever the hash picks, from port p now: room on
   their RX rings, and on their TX rings for what is queued plus a burst a port (one
   frame in gives at most one frame out, so no TX ring can overflow), at most max_rx,
   at most the rows free (SingleProcessAgent._room). */
static uint32_t fwd_agent_room(const struct fwd_agent *a, uint32_t p)
{
    int64_t room = a->max_rx;
    uint32_t w, q;
    for (w = 0; w < a->nworkers; w++) {
        const struct fwd_ring *r = &a->rx[p * a->nworkers + w];
        int64_t tx_free = INT64_MAX, queued = 0;
        room = RTE_MIN(room, (int64_t)(r->size - fwd_ring_count(r)));
        for (q = 0; q < a->nports; q++) {
            const struct fwd_ring *t = &a->tx[q * a->nworkers + w];
            tx_free = RTE_MIN(tx_free, (int64_t)(t->size - fwd_ring_count(t)));
            queued += (int64_t)fwd_ring_count(&a->rx[q * a->nworkers + w]);
        }
        room = RTE_MIN(room, tx_free - queued - (int64_t)a->burst * a->nports);
    }
    room = RTE_MIN(room, (int64_t)*a->zc->depth);
    return room > 0 ? (uint32_t)room : 0;
}

/* Receive from port p into the workers' RX rings; returns frames taken. */
static uint32_t fwd_agent_rx(struct fwd_agent *a, uint32_t p)
{
    uint32_t room = fwd_agent_room(a, p), n, i, w;
    uint64_t *pc = a->port_counters + (size_t)p * a->ncols;
    uint64_t dropped = *a->rx_dropped[p], bytes = 0;
    struct timespec now;
    int64_t ts;

    if (room == 0)
        return 0;
    n = (uint32_t)fwd_rx_burst_zc(a->port_id[p], 0, a->zc, a->pool_len, a->pool_port,
                                  (uint16_t)p, a->rows, room, a->rx_dropped[p],
                                  a->rx_copied[p]);
    pc[a->col_rx_drops] += *a->rx_dropped[p] - dropped;
    if (n == 0)
        return 0;
    clock_gettime(CLOCK_REALTIME, &now);  /* a live port's clock is the wall clock */
    ts = (int64_t)now.tv_sec * 1000000000 + now.tv_nsec;
    for (i = 0; i < n; i++) {
        a->pool_ts[a->rows[i]] = ts;
        bytes += a->pool_len[a->rows[i]];
    }
    pc[a->col_rx_packets] += n;
    pc[a->col_rx_bytes] += bytes;
    *a->rx_frames += n;
    if (a->nworkers == 1) {
        fwd_ring_put(&a->rx[p], a->rows, n);
        return n;
    }
    fwd_agent_rss(a, a->zc->base, a->zc->bufsize, a->rows, n, a->queue);
    for (w = 0; w < a->nworkers; w++) {  /* each worker's frames in arrival order */
        uint32_t mine[FWD_CHUNK], k = 0;
        for (i = 0; i < n; i++) {
            if (a->queue[i] != w)
                continue;
            mine[k++] = a->rows[i];
            if (k == FWD_CHUNK) {
                fwd_ring_put(&a->rx[p * a->nworkers + w], mine, k);
                k = 0;
            }
        }
        if (k)
            fwd_ring_put(&a->rx[p * a->nworkers + w], mine, k);
    }
    return n;
}

/* Send what the workers queued for port p; what the device does not take stays in
   its ring (the ring is the port's queue) and goes first next time. */
static uint32_t fwd_agent_tx(struct fwd_agent *a, uint32_t p)
{
    uint64_t *pc = a->port_counters + (size_t)p * a->ncols;
    uint32_t w, total = 0;
    for (w = 0; w < a->nworkers; w++) {
        struct fwd_ring *r = &a->tx[p * a->nworkers + w];
        uint64_t head = *r->head, tail = __atomic_load_n(r->tail, __ATOMIC_ACQUIRE);
        uint64_t mask = r->size - 1;
        while (head < tail) {
            uint64_t start = head & mask, bytes = 0;
            uint32_t seg = (uint32_t)RTE_MIN(tail - head, r->size - start), sent, nf = 0, i;
            seg = RTE_MIN(seg, a->to_free_cap - a->nfree);  /* room to report copies */
            if (seg == 0)
                break;
            sent = (uint32_t)fwd_tx_burst_zc(a->port_id[p], 0, a->zc, a->copy_mp,
                                             a->pool_len, &r->slots[start], seg,
                                             a->to_free + a->nfree, &nf);
            a->nfree += nf;
            for (i = 0; i < sent; i++)  /* read before the head lets the worker reuse them */
                bytes += a->pool_len[r->slots[start + i]];
            head += sent;
            __atomic_store_n(r->head, head, __ATOMIC_RELEASE);
            pc[a->col_tx_packets] += sent;
            pc[a->col_tx_bytes] += bytes;
            *a->tx_frames += sent;
            total += sent;
            if (sent < seg)
                return total;  /* the device's queue is full */
        }
    }
    return total;
}

/* Up to `rounds` rounds of: rows given back reclaimed, every port received (unless
   `receive` is 0: the engine is stopping), every port's TX rings sent; it stops at
   the first round that moves nothing. Returns the frames moved (received + sent). */
static int64_t fwd_agent_pass(struct fwd_agent *a, int receive, uint32_t rounds)
{
    int64_t moved = 0;
    uint32_t k, p;
    a->nfree = 0;
    for (k = 0; k < rounds; k++) {
        int64_t now = 0;
        fwd_agent_reclaim(a);
        if (receive)
            for (p = 0; p < a->nports; p++)
                now += fwd_agent_rx(a, p);
        for (p = 0; p < a->nports; p++)
            now += fwd_agent_tx(a, p);
        moved += now;
        if (now == 0 || a->nfree == a->to_free_cap)
            break;
    }
    return moved;
}
"""

class DpdkUnavailable(RuntimeError):
    """The system DPDK (headers, pkg-config file, compiler) is missing or unusable."""


def pkg_config() -> tuple[str, list[str], list[str]]:
    """(version, cflags, libs) of libdpdk, each flag as pkg-config printed it."""
    if shutil.which("pkg-config") is None:
        raise DpdkUnavailable(f"pkg-config is not installed; install it with: {MISSING_HINT}")

    def run(*args: str) -> str:
        p = subprocess.run(["pkg-config", *args, "libdpdk"], capture_output=True, text=True)
        if p.returncode != 0:
            raise DpdkUnavailable(
                "libdpdk is not known to pkg-config (the DPDK development files are "
                f"missing); install them with: {MISSING_HINT}\n{p.stderr.strip()}")
        return p.stdout.strip()

    return run("--modversion"), shlex.split(run("--cflags")), shlex.split(run("--libs"))


def cache_root() -> Path:
    """Where built modules live: $FWD_DPDK_CACHE, else $XDG_CACHE_HOME/fwd/dpdk,
    else ~/.cache/fwd/dpdk (outside the repository: nothing to .gitignore)."""
    env = os.environ.get("FWD_DPDK_CACHE")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "fwd" / "dpdk"


def build_key(version: str, cflags: list[str], libs: list[str]) -> str:
    h = hashlib.sha256()
    for part in (CDEF, SOURCE, version, *cflags, "|", *libs, sys.version):
        h.update(part.encode())
        h.update(b"\0")
    return f"{version}-{h.hexdigest()[:16]}"


def module_dir() -> Path:
    version, cflags, libs = pkg_config()
    return cache_root() / build_key(version, cflags, libs)


def _find_built(directory: Path) -> Path | None:
    found = sorted(directory.glob(f"{MODULE}*.so"))
    return found[0] if found else None


def build(force: bool = False, verbose: bool = False) -> Path:
    """Compile the module unless a build for this DPDK and source exists; its path.

    Several processes may ask at once (tests, workers): a lock file serialises them and
    the build goes to a temporary directory renamed into place, so nobody ever loads a
    half-written module."""
    version, cflags, libs = pkg_config()
    target = cache_root() / build_key(version, cflags, libs)
    if not force and (built := _find_built(target)):
        return built
    try:
        import cffi
    except ImportError as e:  # pragma: no cover - cffi is a dependency of the extra
        raise DpdkUnavailable("cffi is not installed: pip install 'fwd[dpdk]'") from e
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not force and (built := _find_built(target)):
            return built
        tmp = Path(tempfile.mkdtemp(prefix=".build-", dir=target.parent))
        try:
            ffi = cffi.FFI()
            ffi.cdef(CDEF)
            # cflags go to the compiler unchanged; -Wl,... and -l... to the linker
            ffi.set_source(MODULE, SOURCE,
                           extra_compile_args=[*cflags, "-DALLOW_EXPERIMENTAL_API", "-O2",
                                               "-Wno-unused-function"],
                           extra_link_args=libs)
            try:
                out = ffi.compile(tmpdir=str(tmp), verbose=verbose)
            except Exception as e:
                raise DpdkUnavailable(
                    f"building the DPDK binding failed ({e}); a C compiler and the DPDK "
                    f"development files are needed: {MISSING_HINT} gcc"
                ) from e
            final = target / Path(out).name
            if target.exists():
                shutil.rmtree(target)
            target.mkdir()
            os.replace(out, final)
            return final
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


_loaded: ModuleType | None = None


def load() -> ModuleType:
    """The compiled module (with `.ffi` and `.lib`), built first if need be."""
    global _loaded
    if _loaded is None:
        path = build()
        spec = importlib.util.spec_from_file_location(MODULE, path)
        if spec is None or spec.loader is None:
            raise DpdkUnavailable(f"cannot load {path}")
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        _loaded = mod
    return _loaded
