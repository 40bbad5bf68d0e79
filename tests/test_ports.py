"""engine/io/ports.py: what a live port's driver reports ends up in the engine's
counters (no root needed: a stand-in driver)."""

from __future__ import annotations

import numpy as np

from engine.config import PortConfig
from engine.control.stats import snapshot
from engine.io.ports import WorkerPorts
from engine.shm.memory import EngineMemory, Geometry


class FakeDriver:
    """Reports the AF_PACKET driver's counters: ours cumulative, the kernel's since
    the last call."""

    def __init__(self) -> None:
        self.ours = {"rx_oversize": 0, "rx_offload_bad": 0}
        self.kernel_drops = 0

    def stats(self) -> dict[str, int]:
        out = {**self.ours, "kernel_drops": self.kernel_drops}
        self.kernel_drops = 0
        return out

    def fileno(self) -> int:
        return -1

    def rx_burst(self, *args: object) -> np.ndarray:
        return np.zeros(0, np.uint32)

    def tx_burst(self, *args: object) -> int:
        return 0

    def wait(self, timeout: float) -> bool:
        return False

    def close(self) -> None:
        pass


def test_oversize_frames_are_received_and_dropped_by_name():
    mem = EngineMemory.create(Geometry.new(1, 1, nbufs=256, bufsize=2048, ring_size=64))
    try:
        driver = FakeDriver()
        ports = WorkerPorts([PortConfig(name="p0", driver="afpacket", mac=bytes(6), mtu=1500,
                                       addresses=(), iface="x")], mem, 0,
                            32, lambda *a, **k: driver)
        driver.ours["rx_oversize"] = 3
        driver.ours["rx_offload_bad"] = 1
        driver.kernel_drops = 2
        ports.count_kernel_drops()
        driver.ours["rx_oversize"] = 5  # cumulative: 2 more
        ports.count_kernel_drops()
        s = snapshot(mem, ["p0"])
        # too long for a buffer: received, then dropped with a reason (as pcap ports
        # count them); the kernel's ring drops and unsegmentable frames: rx_drops only
        assert s.drop["rx_oversize"] == 5
        assert s.ports["p0"]["rx_packets"] == 5
        assert s.ports["p0"]["rx_drops"] == 5 + 1 + 2
        assert s.dropped == 5 and s.balanced
    finally:
        mem.close()
