"""What the engine knows about DPDK device strings before EAL sees them.

A port's `device` is a PCI address (`0000:03:00.0`, or the short `03:00.0`) or a
vdev string: a driver name with an instance number, then comma-separated arguments
(`net_pcap0,rx_pcap=in.pcap,tx_pcap=out.pcap`, `net_af_packet0,iface=eth0`,
`net_ring0`, `net_tap0,iface=dtap0`, `net_memif0,role=server`).

DPDK's multi-process model needs a device whose queues a secondary process can use:
the descriptor rings live in shared hugepage memory and the datapath state is
shared or handed over by the primary. Two of the vdevs cannot:

- `net_pcap` keeps its libpcap handles per process; a secondary that probes it opens
  the capture files again (each process would read the whole input and truncate the
  output);
- `net_af_packet` keeps its sockets and their mmap'ed rings in the primary only;
- `net_tap` serves secondaries but refuses unequal RX and TX queue counts, and the
  engine's layout has one TX queue more than RX queues (the slow path's).

Ports on those run the engine in single-process mode (see engine/io/dpdk/engine.py).
"""

from __future__ import annotations

import re

from engine.config import Config, ConfigError

_PCI = re.compile(r"(?:[0-9A-Fa-f]{4,8}:)?[0-9A-Fa-f]{2}:[0-9A-Fa-f]{2}\.[0-7]")
_VDEV = re.compile(r"(net_[a-z_]+?)(\d*)")

# vdev drivers whose secondaries can receive and send on their own queues
SECONDARY_CAPABLE = ("net_ring", "net_memif", "net_null")
# ... and those that cannot (the reason is told to the user)
SINGLE_PROCESS_ONLY = {
    "net_pcap": "keeps its libpcap handles per process (a secondary would reopen the "
                "capture files)",
    "net_af_packet": "keeps its sockets and rings in the primary process only",
    # it serves secondaries, but wants as many RX as TX queues: the slow path's own TX
    # queue would come with an RX queue the kernel hashes flows onto and nobody polls
    "net_tap": "needs as many RX as TX queues (the slow path's TX queue would bring an "
               "RX queue no worker polls)",
}


def is_pci(device: str) -> bool:
    return _PCI.fullmatch(device.split(",", 1)[0].strip()) is not None


def driver_of(device: str) -> str:
    """`net_pcap` for `net_pcap0,rx_pcap=...`; `pci` for a PCI address; else the name."""
    name = device.split(",", 1)[0].strip()
    if _PCI.fullmatch(name):
        return "pci"
    m = _VDEV.fullmatch(name)
    return m.group(1) if m else name


def single_process_reason(device: str) -> str | None:
    """Why this device cannot serve secondary processes, or None when it can."""
    return SINGLE_PROCESS_ONLY.get(driver_of(device))


def check_config(cfg: Config) -> None:
    """`[dpdk] mode = "multi-process"` against the devices: each must serve secondaries."""
    if cfg.dpdk.mode != "multi-process":
        return
    for i, port in enumerate(cfg.ports):
        why = single_process_reason(port.device or "")
        if why is not None:
            raise ConfigError(f"dpdk.mode: 'multi-process' cannot serve port[{i}] "
                              f"({port.device!r}): its driver {why}; use 'single-process' "
                              "or 'auto'", "dpdk.mode")
