"""Zero-copy DPDK I/O: mbufs whose data are the engine's pool rows (engine/io/dpdk).

`Dpdk.pool_mbufs` makes one agent's pool partition a mempool; a port given it as
`rx_pool` receives into pool rows and sends rows as their own mbufs. What must hold:
the bytes (checked against frames scapy built), no copy where none is needed
(`rx_copied`), and every row free in exactly one place whoever frees it — the
engine's free stack is DPDK's free list, so after the devices are closed the stack
is whole again, with no row twice.

Same prerequisites as tests/test_dpdk.py (`--no-huge`, vdevs, a child process per
EAL); skipped without DPDK, saying what is missing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether
from scapy.packet import Raw
from scapy.utils import rdpcap, wrpcap
from test_dpdk import EAL, PREFIX, in_child, needs_dpdk, sample_frames

from engine.io import dpdk as dp

from conftest import remove_dpdk_runtime_dirs

NBUFS = 512
IO_ROWS = 384  # one worker: the I/O agent has rows [0, 384), the slow path the rest


@pytest.fixture(scope="module", autouse=True)
def _remove_runtime_dirs() -> Any:
    """The EAL runtime directory the scenarios leave behind (one prefix per run)."""
    yield
    remove_dpdk_runtime_dirs(PREFIX)


def _pool(nbufs: int = NBUFS) -> tuple[Any, Any, Any]:
    from engine.shm.memory import AGENT_IO, EngineMemory, Geometry
    from engine.shm.pool import Buffers

    mem = EngineMemory.create(Geometry.new(2, 1, nbufs=nbufs, ring_size=64))
    assert mem.geometry.partitions[AGENT_IO] == (0, nbufs * 3 // 4)
    return mem, Buffers(mem, AGENT_IO), Buffers(mem, mem.geometry.slowpath_agent)


def _stack(mem: Any, agent: int) -> list[int]:
    from engine.shm.memory import ST_FREE

    start, _ = mem.geometry.partitions[agent]
    return mem.free_stack[start: start + int(mem.state[agent, ST_FREE])].tolist()


def _write(mem: Any, rows: np.ndarray, frames: list[bytes]) -> None:
    for r, f in zip(rows, frames, strict=True):
        mem.data[r, : len(f)] = np.frombuffer(f, np.uint8)
        mem.length[r] = len(f)


def scenario_pcap_rx_tx(inp: str, out: str) -> dict[str, Any]:
    """Receive a capture into rows, send the rows back out: no copy either way."""
    mem, buffers, _ = _pool()
    with dp.Dpdk(EAL) as d:
        rows = d.pool_mbufs(mem, 0)
        port = d.port(f"net_pcap0,rx_pcap={inp},tx_pcap={out}", rx_pool=rows)
        got: list[np.ndarray] = []
        for _ in range(1000):
            idx = port.rx_burst(0, mem, buffers, 3, 16)
            got.append(idx)
            if len(idx) == 0 and sum(map(len, got)) > 0:
                break
        idx = np.concatenate(got)
        res: dict[str, Any] = {
            "rows": idx.tolist(),
            "frames": [bytes(mem.data[i, : mem.length[i]]) for i in idx],
            "ports": sorted(set(mem.port[idx].tolist())),
            "copied_rx": port.rx_copied,
            "held_after_rx": len(rows.held_rows()),
            "free_after_rx": buffers.count,
        }
        res["sent"] = port.tx_burst(0, mem, idx, buffers)
        res["copied_tx_freed"] = buffers.count - res["free_after_rx"]  # pcap frees at once
        res["bad_puts"] = rows.bad_puts
    res["stack"] = _stack(mem, 0)
    mem.close()
    return res


def scenario_mixed_tx(inp: str, out: str, frames: list[bytes]) -> dict[str, Any]:
    """Rows of the pool's partition go as their own mbufs; rows of the slow path's
    partition and rows longer than the mbuf's data room are copied, and those are
    freed to their owners by tx_burst (the slow path's through its return ring)."""
    from engine.shm.memory import MBUF_HEADROOM

    mem, buffers, slow = _pool()
    n = len(frames)
    mine = buffers.alloc(n - n // 3)
    theirs = slow.alloc(n // 3)
    idx = np.empty(n, np.uint32)
    idx[0::3], idx[1::3], idx[2::3] = mine[: len(idx[0::3])], theirs, mine[len(idx[0::3]):]
    _write(mem, idx, frames)
    with dp.Dpdk(EAL) as d:
        rows = d.pool_mbufs(mem, 0)
        port = d.port(f"net_pcap0,rx_pcap={inp},tx_pcap={out}", rx_pool=rows)
        copy_pool = d.pool_available()
        sent = port.tx_burst(0, mem, idx, buffers)
        res = {"sent": sent, "copy_mbufs_leaked": copy_pool - d.pool_available(),
               "held": len(rows.held_rows()), "bad_puts": rows.bad_puts,
               "max_frame": rows.max_frame, "headroom": MBUF_HEADROOM}
    res["io_stack"] = sorted(_stack(mem, 0))
    res["slow_returned"] = sorted(mem.rings[f"ret.0.{slow.agent}"].dequeue(64).tolist())
    res["theirs"] = sorted(theirs.tolist())
    res["order"] = idx.tolist()
    mem.close()
    return res


def scenario_ring(frames: list[bytes]) -> dict[str, Any]:
    """net_ring: what queue 0 sends comes back on queue 0 as the same mbufs, so the
    same rows, and no byte is copied on the way. Past the ring's room the device
    takes what fits; the rest stays the caller's (free it: whole stack again)."""
    mem, buffers, _ = _pool(8 * NBUFS)  # more rows than the ring has slots
    n = len(frames)
    with dp.Dpdk([*EAL, "--vdev", "net_ring0"]) as d:
        rows = d.pool_mbufs(mem, 0)
        port = d.port("net_ring0", 1, nrxd=256, ntxd=256, rx_pool=rows)
        idx = buffers.alloc(n)
        _write(mem, idx, frames)
        res: dict[str, Any] = {"sent": port.tx_burst(0, mem, idx, buffers),
                               "held_in_ring": len(rows.held_rows())}
        back = port.rx_burst(0, mem, buffers, 1, 2 * n)
        res["back_rows"] = back.tolist()
        res["sent_rows"] = idx.tolist()
        res["back"] = [bytes(mem.data[i, : mem.length[i]]) for i in back]
        res["copied"] = port.rx_copied
        buffers.free(back)
        # more than the ring holds (its size: 1024 slots by default)
        many = buffers.alloc(buffers.count)
        mem.length[many] = 60
        went = port.tx_burst(0, mem, many, buffers)
        res["full"] = (len(many), went, len(rows.held_rows()))
        buffers.free(many[went:])  # not sent: still ours
        while len(got := port.rx_burst(0, mem, buffers, 0, 256)):
            buffers.free(got)
        res["bad_puts"] = rows.bad_puts
    res["stack"] = _stack(mem, 0)
    mem.close()
    return res


def scenario_double_free() -> dict[str, Any]:
    """The same row sent twice in one burst (an engine bug): net_null frees both
    mbufs, DPDK gives the row back once, and refuses (and counts) the second."""
    mem, buffers, _ = _pool()
    with dp.Dpdk([*EAL, "--vdev", "net_null0"]) as d:
        rows = d.pool_mbufs(mem, 0)
        port = d.port("net_null0", rx_pool=rows)
        row = buffers.alloc(1)
        mem.length[row] = 60
        sent = port.tx_burst(0, mem, np.array([row[0], row[0]], np.uint32), buffers)
        res = {"sent": sent, "bad_puts": rows.bad_puts}
    res["stack"] = _stack(mem, 0)
    mem.close()
    return res


def scenario_agent_pass(inp: str, out: str) -> dict[str, Any]:
    """The single-process agent's C pass with 2 workers: the frames of port 0 spread
    over rx.0.0 and rx.0.1 by the Toeplitz hash (as engine/io/rss.py), counted and
    stamped; what a "worker" then puts on tx.1.w leaves port 1, counted; the rows a
    worker drops come home; the I/O partition whole again at the end."""
    import time

    from engine.counters import MISC_BASE, Misc
    from engine.io.dpdk.engine import SingleProcessAgent
    from engine.io.ports import RX_BYTES, RX_PACKETS, TX_BYTES, TX_PACKETS
    from engine.io.rss import rss_queues
    from engine.shm.memory import AGENT_IO, EngineMemory, Geometry
    from engine.shm.pool import Buffers

    mem = EngineMemory.create(Geometry.new(2, 2, nbufs=NBUFS, ring_size=256))
    res: dict[str, Any] = {}
    with dp.Dpdk(EAL) as d:
        rows = d.pool_mbufs(mem, AGENT_IO)
        ports = [d.port(f"net_pcap0,rx_pcap={inp}", rx_pool=rows),
                 d.port(f"net_pcap1,rx_pcap={inp},tx_pcap={out}", rx_pool=rows)]
        agent = SingleProcessAgent(ports, mem, 16)
        before = time.time_ns()
        moved = sum(agent.drain() for _ in range(20))
        got = {w: mem.rings[f"rx.0.{w}"].dequeue(64) for w in (0, 1)}
        port1 = {w: mem.rings[f"rx.1.{w}"].dequeue(64) for w in (0, 1)}
        res["moved"] = moved
        res["rx"] = {w: [bytes(mem.data[i, : mem.length[i]]) for i in got[w]] for w in got}
        res["ports"] = sorted(set(mem.port[np.concatenate(list(got.values()))].tolist()))
        res["stamped"] = bool((mem.ts[np.concatenate(list(got.values()))] >= before).all())
        both = np.concatenate([got[0], got[1], port1[0], port1[1]])
        res["want_queue"] = rss_queues(mem.data.reshape(-1),
                                       got[0].astype(np.int64) * mem.geometry.bufsize,
                                       mem.length[got[0]].astype(np.int64), 2).tolist()
        res["want_queue1"] = rss_queues(mem.data.reshape(-1),
                                        got[1].astype(np.int64) * mem.geometry.bufsize,
                                        mem.length[got[1]].astype(np.int64), 2).tolist()
        pc = mem.port_counters[AGENT_IO]
        res["rx_counted"] = (int(pc[0, RX_PACKETS]) + int(pc[1, RX_PACKETS]),
                             int(pc[0, RX_BYTES]) + int(pc[1, RX_BYTES]),
                             int(mem.counters[AGENT_IO][MISC_BASE + Misc.rx_frames]))
        res["rx_bytes"] = int(mem.length[both].sum())
        # "workers": port 0's frames out of port 1, port 1's dropped
        worker = [Buffers(mem, mem.geometry.worker_agent(w)) for w in (0, 1)]
        mem.rings["tx.1.1"].enqueue(got[1])
        mem.rings["tx.1.0"].enqueue(got[0])
        for w in (0, 1):
            worker[w].free(port1[w])  # through the return rings
        agent.drain()
        res["tx_counted"] = (int(pc[1, TX_PACKETS]), int(pc[1, TX_BYTES]),
                             int(mem.counters[AGENT_IO][MISC_BASE + Misc.tx_frames]))
        res["sent"] = [bytes(mem.data[i, : mem.length[i]]) for i in np.concatenate(
            [got[0], got[1]])]
        agent.close()
        res["held"] = len(rows.held_rows())
        res["bad_puts"] = rows.bad_puts
    res["stack"] = _stack(mem, AGENT_IO)
    res["io_rows"] = mem.geometry.partitions[AGENT_IO][1]
    mem.close()
    return res


def frames_of(path: Path) -> list[bytes]:
    return [bytes(p) for p in rdpcap(str(path))]


@needs_dpdk
def test_pcap_rx_and_tx_without_a_copy(tmp_path: Path) -> None:
    frames = sample_frames(40)
    wrpcap(str(tmp_path / "in.pcap"), frames)
    r = in_child(scenario_pcap_rx_tx, str(tmp_path / "in.pcap"), str(tmp_path / "out.pcap"))
    assert r["frames"] == [bytes(f) for f in frames]
    assert r["ports"] == [3]
    assert r["copied_rx"] == 0  # every frame arrived in its row
    assert len(set(r["rows"])) == 40 and max(r["rows"]) < IO_ROWS  # the I/O partition's
    assert r["held_after_rx"] == 0  # received rows are the engine's, not DPDK's
    assert r["free_after_rx"] == IO_ROWS - 40  # the device took them from the engine's stack
    assert r["sent"] == 40 and r["copied_tx_freed"] == 40  # freed by the device
    assert frames_of(tmp_path / "out.pcap") == [bytes(f) for f in frames]
    assert r["bad_puts"] == 0
    assert sorted(r["stack"]) == list(range(IO_ROWS))  # every row free, once


@needs_dpdk
def test_rows_too_long_or_of_another_partition_are_copied(tmp_path: Path) -> None:
    frames = []
    for i in range(30):
        size = 2000 if i % 5 == 4 else 60 + 17 * i  # 2000 > the data room after the headroom
        f = Ether(src="02:00:00:00:01:02", dst="02:00:00:00:00:01") / IP(dst=f"10.0.0.{i}") \
            / UDP(sport=i, dport=9)
        frames.append(bytes(f / Raw(b"z" * (size - len(f)))))
    out = tmp_path / "out.pcap"
    wrpcap(str(tmp_path / "empty.pcap"), [])
    r = in_child(scenario_mixed_tx, str(tmp_path / "empty.pcap"), str(out), frames)
    assert r["max_frame"] == 2048 - r["headroom"] == 1920
    assert r["sent"] == 30
    assert frames_of(out) == frames  # in order, whichever way each went
    # the slow path's 10 rows came back to it through its return ring, and only those
    assert r["slow_returned"] == r["theirs"]
    # the I/O partition whole again: the zero-copy rows through the device, the long
    # ones (copied) through tx_burst
    assert r["io_stack"] == list(range(IO_ROWS))
    assert r["held"] == 0 and r["bad_puts"] == 0 and r["copy_mbufs_leaked"] == 0


@needs_dpdk
def test_ring_hands_the_same_rows_back_and_keeps_what_it_cannot_take() -> None:
    frames = [bytes(f) for f in sample_frames(50)]
    r = in_child(scenario_ring, frames)
    assert r["sent"] == 50 and r["held_in_ring"] == 50
    assert r["back_rows"] == r["sent_rows"]  # the very rows: nothing was copied
    assert r["back"] == frames and r["copied"] == 0
    offered, went, held = r["full"]
    assert offered == 8 * IO_ROWS and 0 < went < offered and held == went
    assert r["bad_puts"] == 0
    assert sorted(r["stack"]) == list(range(8 * IO_ROWS))


@needs_dpdk
def test_a_row_freed_twice_is_refused() -> None:
    r = in_child(scenario_double_free)
    assert r["sent"] == 2
    assert r["bad_puts"] == 1
    assert sorted(r["stack"]) == list(range(IO_ROWS))  # once on the stack, not twice


@needs_dpdk
def test_agent_pass_spreads_counts_sends_and_gives_rows_back(tmp_path: Path) -> None:
    frames = [bytes(f) for f in sample_frames(40)]
    wrpcap(str(tmp_path / "in.pcap"), frames)
    out = tmp_path / "out.pcap"
    r = in_child(scenario_agent_pass, str(tmp_path / "in.pcap"), str(out))
    assert r["moved"] == 80  # 40 frames in on each port
    rx = r["rx"]
    assert sorted(rx[0] + rx[1]) == sorted(frames)
    assert rx[0] and rx[1]  # both workers got some
    # each worker's frames are those the Toeplitz hash gives it, in arrival order
    assert r["want_queue"] == [0] * len(rx[0]) and r["want_queue1"] == [1] * len(rx[1])
    assert rx[0] == [f for f in frames if f in rx[0]]
    assert r["ports"] == [0] and r["stamped"]
    assert r["rx_counted"] == (80, r["rx_bytes"], 80)
    assert r["tx_counted"][0] == 40 == r["tx_counted"][2]
    assert r["tx_counted"][1] == sum(map(len, frames))
    assert frames_of(out) == r["sent"]  # tx.1.0, then tx.1.1, each in order
    assert r["held"] == 0 and r["bad_puts"] == 0
    assert sorted(r["stack"]) == list(range(r["io_rows"]))  # every row home, once
