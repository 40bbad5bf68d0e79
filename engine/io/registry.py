"""The port drivers by name, and what the rest of the engine asks of each.

`fwd check`, the control process and the forwarding workers look a driver up here
(`driver_for(cfg)`) instead of testing `port.driver` themselves; a new driver is one
class below. A deployment has one driver: config.py refuses a mix of replayed (pcap)
and live ports, and of live drivers.

    check         what `fwd check` can only learn from the driver (beyond the schema)
    plan          decided before shared memory exists (DPDK: mode, EAL arguments)
    control_io    the control process's share of the I/O: the pcap replay, or the
                  send-only queues that carry the slow path's output
    worker_ports  a forwarding worker's own queue on every port (None: its rings are
                  fed and emptied by the control process)

Drivers are imported when first used, so that a pcap run never loads DPDK's binding.
"""

from __future__ import annotations

from typing import Any

from engine.config import Config, ConfigError
from engine.io.ports import SenderPorts, WorkerPorts
from engine.shm.memory import AGENT_IO, EngineMemory


class DriverError(RuntimeError):
    """A driver cannot run as configured (missing interface, library, hugepages); the
    message is for people."""


class Driver:
    name = ""
    live = True  # frames come from outside and a run lasts until a signal
    restartable = True  # a forwarding worker that dies is started again

    def check(self, cfg: Config) -> None:
        """Raise ConfigError for what the schema cannot tell (the default: nothing)."""

    def plan(self, cfg: Config) -> Any:
        return None

    def workers_receive(self, plan: Any) -> bool:
        return self.live

    def control_io(self, cfg: Config, plan: Any, mem: EngineMemory, burst: int) -> Any:
        raise NotImplementedError

    def worker_ports(self, cfg: Config, mem: EngineMemory, worker: int, burst: int,
                     cpu: int | None) -> WorkerPorts | None:
        return None


class PcapDriver(Driver):
    """Capture files as ports: the control process plays the NIC (engine/io/pcap_port.py)."""

    name = "pcap"
    live = False

    def check(self, cfg: Config) -> None:
        """Every `tx` capture can be written (engine/io/pcap.py: check_writable), so a
        replay is not refused only after it ran."""
        from engine.io.pcap import PcapError, check_writable

        for i, port in enumerate(cfg.ports):
            try:
                check_writable(port.tx)
            except PcapError as err:
                raise ConfigError(f"port[{i}].tx: {err}", f"port[{i}].tx") from None

    def control_io(self, cfg: Config, plan: Any, mem: EngineMemory, burst: int) -> Any:
        from engine.io.pcap_port import PcapPorts

        return PcapPorts(list(cfg.ports), list(range(len(cfg.ports))), mem, burst)


class AfPacketDriver(Driver):
    """Kernel interfaces through packet sockets (engine/io/afpacket.py)."""

    name = "afpacket"

    def control_io(self, cfg: Config, plan: Any, mem: EngineMemory, burst: int) -> Any:
        from engine.io.afpacket import open_queue

        try:  # opened before any worker starts: a missing interface is told first
            return SenderPorts(list(cfg.ports), mem, AGENT_IO, burst, open_queue)
        except OSError as err:
            raise DriverError(str(err)) from None

    def worker_ports(self, cfg: Config, mem: EngineMemory, worker: int, burst: int,
                     cpu: int | None) -> WorkerPorts | None:
        from engine.io.afpacket import open_queue

        return WorkerPorts(cfg.ports, mem, worker, burst, open_queue)


class DpdkDriver(Driver):
    """DPDK ethdevs through the project's cffi binding (engine/io/dpdk)."""

    name = "dpdk"
    restartable = False  # a secondary's death takes its queues' state with it

    def check(self, cfg: Config) -> None:
        from engine.io.dpdk.devices import check_config

        check_config(cfg)

    def plan(self, cfg: Config) -> Any:
        from engine.io.dpdk.engine import DpdkSetupError, plan_for

        try:  # the library, hugepages and the mode, before anything is created
            return plan_for(cfg)
        except DpdkSetupError as err:
            raise DriverError(str(err)) from None

    def workers_receive(self, plan: Any) -> bool:
        return bool(plan.multi)

    def control_io(self, cfg: Config, plan: Any, mem: EngineMemory, burst: int) -> Any:
        from engine.io.dpdk.engine import DpdkControl, DpdkSetupError

        try:  # the DPDK primary: EAL, ports configured and started, before the workers
            return DpdkControl(cfg, plan, mem, burst)
        except DpdkSetupError as err:
            raise DriverError(str(err)) from None

    def worker_ports(self, cfg: Config, mem: EngineMemory, worker: int, burst: int,
                     cpu: int | None) -> WorkerPorts | None:
        from engine.io.dpdk.engine import worker_ports

        return worker_ports(cfg, mem, worker, burst, cpu)


DRIVERS: dict[str, Driver] = {d.name: d for d in (PcapDriver(), AfPacketDriver(),
                                                   DpdkDriver())}


def driver_for(cfg: Config) -> Driver:
    """The deployment's driver (config.py allows one per deployment)."""
    return DRIVERS[cfg.ports[0].driver]


def check(cfg: Config) -> Config:
    """The drivers' part of `fwd check`: raises ConfigError naming the key; returns
    the config for chaining (`check(load_config(path))`)."""
    for name in sorted({p.driver for p in cfg.ports}):
        DRIVERS[name].check(cfg)
    return cfg
