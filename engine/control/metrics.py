"""Prometheus metrics: the engine's counters at `http://HOST:PORT/metrics`.

`[metrics] listen = "127.0.0.1:9108"` in the config. The control process serves them
with prometheus_client's HTTP server in a thread of its own; a scrape only reads shared
memory (the counters, per-port counters, agent state words, ring indexes), never the
FIB or anything the main thread writes, so no lock is needed and the data plane is
never touched. Values are those of `fwd stats --json` at the time of the scrape
(`engine.control.stats.snapshot`, `agent_rows`), under these names:

    fwd_port_<rx_packets|rx_bytes|tx_packets|tx_bytes|rx_drops|tx_drops>_total{port}
    fwd_port_up{port}, fwd_port_mtu{port}
    fwd_port_drops_total{port,reason}  the fast path's drops of frames received on a port
    fwd_ip_total{counter}      /proc/net/snmp Ip: (InReceives, ForwDatagrams, ...)
    fwd_icmp_total{counter}, fwd_udp_total{counter}, fwd_tcp_total{counter}
    fwd_arp_total{counter}     ARP and the neighbour table (levels are gauges: fwd_arp_queued)
    fwd_reassembly_queues, fwd_reassembly_memory_bytes, fwd_reassembly_memory_high_bytes,
    fwd_reassembly_high_thresh_bytes, fwd_reassembly_low_thresh_bytes
                               reassembly memory now, its high-water mark, its thresholds
    fwd_drops_total{reason}    the fast path's drop reasons
    fwd_slowpath_total{reason} packets handed to the slow path, by reason
    fwd_slowpath_drops_total{reason}
    fwd_unsent_total{reason}   router-originated packets that were not sent
    fwd_accounting_<received|forwarded|delivered|dropped|to_slowpath|slow_...>_total
    fwd_accounting_balanced    1 when every packet is accounted for exactly once
    fwd_worker_<rx_frames|forwarded|delivered|dropped|to_slowpath|tx_frames|batches>_total{worker}
    fwd_worker_busy_seconds_total{worker}, fwd_worker_loops_total{worker}
    fwd_worker_free_buffers{worker}
    fwd_ring_used{ring}, fwd_ring_size{ring}
    fwd_pool_buffers, fwd_pool_free_buffers
    fwd_capture_lost_total     frames a full capture ring refused (fwd capture)
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from engine.counters import port_drops
from engine.shm.memory import CTL_PORT_UP, PORT_COUNTER_NAMES, ST_FREE, EngineMemory

ACCOUNTING = ("received", "forwarded", "delivered", "dropped", "to_slowpath", "slow_taken",
              "slow_forwarded", "slow_delivered", "slow_dropped", "slow_reassembled",
              "slow_merged")
WORKER_COUNTERS = ("rx_frames", "forwarded", "delivered", "dropped", "to_slowpath",
                   "tx_frames", "batches")
ARP_LEVELS = ("queued",)
# counters.Reasm levels: gauge name and help
REASSEMBLY = {"inuse": ("queues", "Reassembly queues held now"),
              "memory": ("memory_bytes", "Bytes reassembly holds now (fragments and queues)"),
              "memory_high": ("memory_high_bytes", "The most bytes reassembly held since "
                              "the start"),
              "high_thresh": ("high_thresh_bytes", "[reassembly] high_thresh"),
              "low_thresh": ("low_thresh_bytes", "[reassembly] low_thresh")}


class MetricsError(RuntimeError):
    """The metrics endpoint could not be served (the message names the address)."""


class EngineCollector:
    """A prometheus_client collector over one engine's shared memory."""

    def __init__(self, mem: EngineMemory, port_names: list[str]) -> None:
        self.mem = mem
        self.port_names = list(port_names)

    def describe(self) -> list[Any]:
        return []  # families are made per scrape (no registration-time read of memory)

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        from engine.control.commands import ring_levels
        from engine.control.stats import agent_rows, snapshot

        mem = self.mem
        s = snapshot(mem, self.port_names, devices=False)
        for name in PORT_COUNTER_NAMES:
            fam = CounterMetricFamily(f"fwd_port_{name}", f"Port {name.replace('_', ' ')}",
                                      labels=["port"])
            for port, c in s.ports.items():
                fam.add_metric([port], c[name])
            yield fam
        up = GaugeMetricFamily("fwd_port_up", "1 when the port is up", labels=["port"])
        mask = int(mem.ctl[CTL_PORT_UP])
        for p, port in enumerate(self.port_names):
            up.add_metric([port], (mask >> p) & 1)
        yield up
        mtu = GaugeMetricFamily("fwd_port_mtu", "The port's MTU now (fwd port set)",
                                labels=["port"])
        for p, port in enumerate(self.port_names):
            mtu.add_metric([port], int(mem.port_mtu[p]))
        yield mtu
        by_port = CounterMetricFamily("fwd_port_drops", "Frames received on the port that "
                                      "the fast path dropped, by reason",
                                      labels=["port", "reason"])
        for p, reasons in port_drops(mem.counters.copy(), len(self.port_names)).items():
            for reason, v in reasons.items():
                by_port.add_metric([self.port_names[p], reason], v)
        yield by_port
        sections = (("ip", "/proc/net/snmp Ip: counters", s.snmp),
                    ("icmp", "/proc/net/snmp Icmp: counters", s.icmp),
                    ("udp", "/proc/net/snmp Udp: counters", s.udp),
                    ("tcp", "/proc/net/snmp Tcp: counters", s.tcp))
        for name, doc, counters in sections:
            fam = CounterMetricFamily(f"fwd_{name}", doc, labels=["counter"])
            for k, v in counters.items():
                fam.add_metric([k], v)
            yield fam
        arp = CounterMetricFamily("fwd_arp", "ARP and neighbour table events",
                                  labels=["counter"])
        for k, v in s.arp.items():
            if k in ARP_LEVELS:
                yield GaugeMetricFamily(f"fwd_arp_{k}", f"ARP {k} (a level)", value=v)
            else:
                arp.add_metric([k], v)
        yield arp
        for k, (name, doc) in REASSEMBLY.items():
            yield GaugeMetricFamily(f"fwd_reassembly_{name}", doc, value=s.reassembly[k])
        reasons = (("drops", "Frames the fast path dropped, by reason", s.drop),
                   ("slowpath", "Packets handed to the slow path, by reason", s.slow),
                   ("slowpath_drops", "Packets the slow path dropped, by reason", s.slow_drop),
                   ("unsent", "Packets the router originated and did not send, by reason",
                    s.unsent))
        for name, doc, counters in reasons:
            fam = CounterMetricFamily(f"fwd_{name}", doc, labels=["reason"])
            for k, v in counters.items():
                fam.add_metric([k], v)
            yield fam
        for name in ACCOUNTING:
            yield CounterMetricFamily(f"fwd_accounting_{name}", f"Accounting: {name}",
                                      value=getattr(s, name))
        yield GaugeMetricFamily("fwd_accounting_slow_held",
                                "Packets the slow path holds now", value=s.slow_held)
        yield GaugeMetricFamily("fwd_accounting_balanced",
                                "1 when every packet is accounted for exactly once",
                                value=int(s.balanced))
        rows = agent_rows(mem)
        for name in WORKER_COUNTERS:
            fam = CounterMetricFamily(f"fwd_worker_{name}", f"Per agent: {name}",
                                      labels=["worker"])
            for r in rows:
                fam.add_metric([str(r["agent"])], int(r[name]))
            yield fam
        busy = CounterMetricFamily("fwd_worker_busy_seconds",
                                   "Time spent on non-empty batches", labels=["worker"])
        loops = CounterMetricFamily("fwd_worker_loops", "Loop passes", labels=["worker"])
        free = GaugeMetricFamily("fwd_worker_free_buffers", "Free buffers the agent owns",
                                 labels=["worker"])
        for r in rows:
            busy.add_metric([str(r["agent"])], int(r["busy_ns"]) / 1e9)
            loops.add_metric([str(r["agent"])], int(r["loops"]))
            free.add_metric([str(r["agent"])], int(r["free_buffers"]))
        yield from (busy, loops, free)
        used = GaugeMetricFamily("fwd_ring_used", "Descriptors in the ring", labels=["ring"])
        size = GaugeMetricFamily("fwd_ring_size", "Ring size", labels=["ring"])
        for ring, (n, cap) in ring_levels(mem).items():
            used.add_metric([ring], n)
            size.add_metric([ring], cap)
        yield from (used, size)
        yield GaugeMetricFamily("fwd_pool_buffers", "Buffers in the pool",
                                value=mem.geometry.nbufs)
        yield GaugeMetricFamily("fwd_pool_free_buffers", "Free buffers (all owners)",
                                value=int(mem.state[:, ST_FREE].sum()))
        yield CounterMetricFamily("fwd_capture_lost", "Frames full capture rings refused",
                                  value=int(mem.cap_lost[:, 0].sum()))


class MetricsServer:
    """prometheus_client's HTTP server on its own thread; `close` stops it."""

    def __init__(self, mem: EngineMemory, port_names: list[str],
                 listen: tuple[str, int]) -> None:
        try:
            from prometheus_client import CollectorRegistry, start_http_server
        except ImportError:
            raise MetricsError("[metrics] needs prometheus-client: pip install "
                               "'fwd[metrics]'") from None
        host, port = listen
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(EngineCollector(mem, port_names))
        try:
            self._server, self._thread = start_http_server(port, host, registry=self.registry)
        except OSError as err:
            raise MetricsError(f"metrics: cannot listen on {host}:{port}: "
                               f"{err.strerror or err}") from None
        self.host = host
        self.port = int(self._server.server_address[1])

    @property
    def address(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5.0)
