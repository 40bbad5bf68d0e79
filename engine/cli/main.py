"""The `fwd` command."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from engine import __version__
from engine.config import Config, ConfigError, format_config_error, load_config
from engine.control.wire import DEFAULT_SOCKET

if TYPE_CHECKING:  # imported when a command needs it: `fwd --help` stays quick
    from engine.control.supervisor import RunResult

EXIT_FAULT = 1  # an internal fault: an agent died, counters that do not balance
EXIT_CONFIG = 2  # bad input: the config, an input capture, an output that cannot be written


def _load_or_exit(path: str) -> Config:
    """The config as `fwd check` sees it: the schema, then what the drivers can tell."""
    from engine.io.registry import check as check_drivers

    try:
        return check_drivers(load_config(path))
    except ConfigError as err:
        click.echo(format_config_error(path, err), err=True)
        sys.exit(EXIT_CONFIG)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="fwd")
def main() -> None:
    """fwd: a multiprocess, vectorised IPv4 forwarding engine.

    Run a deployment described by a TOML config (see configs/default.toml).
    """


@main.command()
@click.argument("config", type=click.Path(dir_okay=False))
def check(config: str) -> None:
    """Validate CONFIG; exit 2 with a message naming the key if it is bad."""
    cfg = _load_or_exit(config)
    click.echo(f"{config}: ok ({len(cfg.ports)} ports, {len(cfg.routes)} routes, "
               f"{cfg.engine.workers} workers)")


@main.command()
@click.argument("config", type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print the counters as JSON.")
@click.option("--keep-running", is_flag=True,
              help="With pcap ports: once every input frame is forwarded and drained, write "
                   "the outputs and keep the engine and its control socket up until "
                   "SIGINT/SIGTERM.")
@click.option("--socket", "socket_path", metavar="PATH",
              help="Serve the control socket on PATH (overrides [engine] control_socket; "
                   f"default {DEFAULT_SOCKET}, skipped with a warning when unusable).")
def run(config: str, as_json: bool, keep_running: bool, socket_path: str | None) -> None:
    """Run the deployment in CONFIG.

    With pcap ports: forward every input frame, write every port's output capture,
    print the counters and exit (with --keep-running: stay up until SIGINT/SIGTERM).
    With live ports (afpacket, dpdk; needs root): forward until SIGINT/SIGTERM, then
    drain, close the ports, print the counters and exit. While it runs, `fwd stats`,
    `fwd route ...` and `fwd port ...` talk to it through its control socket.

    \b
    Every stop once forwarding started prints the counters, the accounting line and
    the pool check (stderr), and the outputs hold what was sent. Exit status:
      0  the input was forwarded and written, or SIGINT/SIGTERM stopped it (drained)
      1  an internal fault: a worker died past its restart limit or at start-up, the
         slow path died, the counters do not balance; or the engine could not start
         (control socket, namespace, driver)
      2  bad input: the config, an input capture, an output that cannot be written
         (refused before the first packet; if only the write fails, after the run,
         with its counters)
    A fatal stop ends with one line saying why.
    """
    from engine.cli.progress import ReplayProgress
    from engine.control.supervisor import EngineError, RunStopped
    from engine.control.supervisor import run as run_engine
    from engine.io.pcap import PcapError
    from engine.workers.loop import name_process

    cfg = _load_or_exit(config)
    name_process("fwd")  # the control process, beside its fwd-worker-N and fwd-slowpath
    explicit = socket_path or cfg.engine.control_socket
    # a long replay's progress bar: on a terminal, not for a reader of the JSON
    bar = ReplayProgress() if sys.stdout.isatty() and not as_json else None
    try:
        result = run_engine(cfg, control_socket=explicit or DEFAULT_SOCKET,
                            control_required=bool(explicit), keep_running=keep_running,
                            log=bar.say if bar else lambda msg: click.echo(msg, err=True),
                            progress=bar.update if bar else None)
    except RunStopped as stop:
        if bar:
            bar.close()
        status = EXIT_CONFIG if isinstance(stop.cause, PcapError) else EXIT_FAULT
        _print_result(stop.result, as_json, {"error": str(stop), "status": status})
        click.echo(f"fwd: {stop}", err=True)
        sys.exit(status)
    except PcapError as err:
        click.echo(f"fwd: {err}", err=True)
        sys.exit(EXIT_CONFIG)
    except EngineError as err:
        click.echo(f"fwd: {err}", err=True)
        sys.exit(EXIT_FAULT)
    finally:
        if bar:
            bar.close()
    _print_result(result, as_json)
    if not result.stats.balanced:
        click.echo("fwd: counters do not balance: a frame was lost or counted twice", err=True)
        sys.exit(EXIT_FAULT)
    # everything is closed, unlinked and printed: skip the interpreter's teardown of
    # numba and llvmlite, 2-3 s of a SIGTERM stop in the lab on a loaded 2-CPU machine
    # (the target is 2 s), as the agents do (workers/loop.py exit_quickly)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def _print_result(result: RunResult, as_json: bool, stop: dict[str, Any] | None = None) -> None:
    """A run's counters on stdout: as text, or as JSON with the pool check (null when
    it could not be made) and, after a fatal stop, `stop` (its error and exit status)."""
    from engine.control.stats import format_snapshot

    if not as_json:
        click.echo(format_snapshot(result.stats))
        return
    doc = result.stats.as_dict()
    pool = result.pool
    doc["pool"] = None if pool is None else {"size": pool.size, "free": pool.free,
                                             "queued": pool.queued, "lost": pool.nlost}
    if stop is not None:
        doc["stop"] = stop
    click.echo(json.dumps(doc, indent=2))


# --- commands against a running engine (engine/cli/client.py) ------------------------------

SOCKET_HELP = (f"The engine's control socket (default: $FWD_SOCKET, else {DEFAULT_SOCKET}, "
               "else the only engine socket beside it; `fwd run --socket` or [engine] "
               "control_socket chose it).")


def socket_option(f: Callable[..., Any]) -> Callable[..., Any]:
    return click.option("--socket", "socket_path", metavar="PATH", help=SOCKET_HELP)(f)


def _call(socket_path: str | None, msg: dict[str, Any], timeout: float = 5.0,
          what: str = "") -> dict[str, Any]:
    """The engine's reply to `msg`; a message (after `what`, when it is an error reply)
    and exit 1 if there is none or it is an error."""
    from engine.cli.client import ControlError, default_socket, request

    try:
        reply = request(socket_path or default_socket(), msg, timeout=timeout)
    except ControlError as err:
        click.echo(f"fwd: {err}", err=True)
        sys.exit(1)
    if not reply.get("ok"):
        click.echo(f"fwd: {what}{reply.get('error', 'the engine refused the request')}",
                   err=True)
        sys.exit(1)
    return reply


@main.command()
@socket_option
@click.option("--json", "as_json", is_flag=True,
              help="Print everything (counters, per-worker rows, FIB, ports) as JSON.")
@click.option("--watch", "live", is_flag=True,
              help="A live view: per-port packets/s and bits/s, per-worker busy share and "
                   "batch fill, rings, pool, drops by reason, refreshed every --interval.")
@click.option("--interval", type=click.FloatRange(0.05, 3600), default=1.0, show_default=True,
              help="Seconds between two refreshes of --watch.")
@click.option("--count", type=click.IntRange(1), default=None,
              help="With --watch: stop after this many refreshes (default: until Ctrl-C).")
def stats(socket_path: str | None, as_json: bool, live: bool, interval: float,
          count: int | None) -> None:
    """Show the counters of a running engine: ports, Ip: counters, drop and slow-path
    reasons, the accounting check, and one row per worker."""
    from engine.control.stats import Snapshot, format_agents, format_snapshot

    if live:
        from rich.console import Console

        from engine.cli.watch import watch

        console = Console()
        if not console.is_terminal:  # a file or a pipe: wide enough for every column
            console = Console(width=max(console.width, 132))
        watch(lambda: _call(socket_path, {"cmd": "stats"})["stats"], interval, count, console)
        return
    s = _call(socket_path, {"cmd": "stats"})["stats"]
    if as_json:
        click.echo(json.dumps(s, indent=2))
        return
    click.echo(format_snapshot(Snapshot.from_dict(s)))
    click.echo("ports: " + " ".join(f"{name}={'up' if st['up'] else 'DOWN'}"
                                    for name, st in s.get("port_state", {}).items()))
    fib = s.get("fib", {})
    if fib:
        click.echo(f"fib: {fib['routes']} entries, tbl8 groups {fib['tbl8_used']} used of "
                   f"{fib['tbl8_groups']}, generation {fib['generation']}")
    click.echo("")
    click.echo(format_agents(s.get("workers", [])))


@main.command()
@click.argument("count", type=click.IntRange(1, 1024))
@click.option("--port", metavar="P", help="Only packets received on port P.")
@click.option("--timeout", type=click.FloatRange(0), default=None,
              help="Give up waiting after this many seconds (default: until COUNT packets "
                   "or Ctrl-C) and print what was traced.")
@click.option("--json", "as_json", is_flag=True, help="Print the records as JSON.")
@socket_option
def trace(count: int, port: str | None, timeout: float | None, as_json: bool,
          socket_path: str | None) -> None:
    """Trace the next COUNT packets through the fast path, stage by stage: the parsed
    header, the checks of ip_rcv, the route and next hop, ip_forward, the neighbour,
    the rewrite and the verdict (like VPP's `show trace`)."""
    import time

    from engine.cli.trace_format import format_trace

    msg: dict[str, Any] = {"cmd": "trace.start", "count": count}
    if port is not None:
        msg["port"] = port
    gen = _call(socket_path, msg)["gen"]
    deadline = None if timeout is None else time.monotonic() + timeout
    reply: dict[str, Any] = {"records": [], "ports": []}
    try:
        while True:
            reply = _call(socket_path, {"cmd": "trace.read", "gen": gen})
            if reply["done"] or (deadline is not None and time.monotonic() >= deadline):
                break
            time.sleep(0.05)
    except KeyboardInterrupt:
        pass
    finally:
        _call(socket_path, {"cmd": "trace.stop"})
    records = reply["records"]
    if as_json:
        click.echo(json.dumps([{k: v.hex() if isinstance(v, bytes) else v
                                for k, v in r.items()} for r in records], indent=2))
    elif records:
        click.echo(format_trace(records, reply["ports"]))
    if len(records) < count:
        click.echo(f"fwd: traced {len(records)} of {count} packets", err=True)


@main.command()
@click.argument("port_name", metavar="PORT")
@click.option("--at", "point", type=click.Choice(["rx", "tx", "drop"]), default="rx",
              show_default=True,
              help="rx: as received (before any rewrite); tx: as the fast path sends them; "
                   "drop: what the fast path drops (reasons are printed at the end).")
@click.option("-w", "--write", "path", required=True, type=click.Path(dir_okay=False,
                                                                     allow_dash=True),
              help="The pcap file to write (classic pcap, as tcpdump -w); - for standard "
                   "output, written as frames come (fwd capture p0 -w - | tcpdump -r -).")
@click.option("--count", type=click.IntRange(1), default=None,
              help="Stop after this many frames (default: until Ctrl-C or --duration).")
@click.option("--duration", type=click.FloatRange(0), default=None,
              help="Stop after this many seconds.")
@socket_option
def capture(port_name: str, point: str, path: str, count: int | None, duration: float | None,
            socket_path: str | None) -> None:
    """Write the frames seen on PORT (or `any`) at a point of the fast path to a pcap
    that tcpdump and Wireshark read. Capturing never slows forwarding down: frames a
    full capture ring cannot take are counted as lost."""
    import time

    from engine.counters import Drop
    from engine.io.pcap import PcapError, PcapWriter, cannot_write

    msg: dict[str, Any] = {"cmd": "capture.start", "at": point}
    if port_name != "any":
        msg["port"] = port_name
    to_stdout = path == "-"
    try:
        out = sys.stdout.buffer if to_stdout else open(path, "wb")  # noqa: SIM115
    except OSError as err:
        click.echo(f"fwd: {cannot_write(path, err)}", err=True)
        sys.exit(EXIT_CONFIG)
    gen = _call(socket_path, msg)["gen"]
    deadline = None if duration is None else time.monotonic() + duration
    reasons: dict[str, int] = {}
    lost = 0
    writer = None
    failed: PcapError | None = None
    try:
        writer = PcapWriter(out)
        while count is None or writer.frames < count:
            want = 4096 if count is None else min(4096, count - writer.frames)
            reply = _call(socket_path, {"cmd": "capture.read", "gen": gen, "max": want})
            frames = reply["frames"][:want]
            writer.write([f[4] for f in frames], [f[0] for f in frames])
            if point == "drop":
                for f in frames:
                    reasons[Drop(f[3]).name] = reasons.get(Drop(f[3]).name, 0) + 1
            lost = reply["lost"]
            if deadline is not None and time.monotonic() >= deadline:
                break
            if not frames:
                time.sleep(0.02)
    except KeyboardInterrupt:
        pass
    except BrokenPipeError:  # the reader (tcpdump -c N, head) has had enough: nothing
        # more goes to it, not even at exit
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    except OSError as err:  # a full disk, /dev/full
        failed = cannot_write(path, err)
    finally:
        _call(socket_path, {"cmd": "capture.stop"})
        if not to_stdout:
            out.close()
    if failed is not None:
        click.echo(f"fwd: {failed}", err=True)
        sys.exit(EXIT_CONFIG)
    written = writer.frames if writer is not None else 0
    click.echo(f"{written} frame{'s' if written != 1 else ''} written to "
               f"{'standard output' if to_stdout else path}"
               + (f" ({lost} lost to a full capture ring)" if lost else ""), err=True)
    if reasons:
        click.echo("drop reasons: " + " ".join(f"{k}={v}" for k, v in reasons.items()),
                   err=True)


@main.group()
def route() -> None:
    """Show and change the routes of a running engine (through its control socket)."""


@route.command("add")
@click.argument("prefix")
@click.option("--via", metavar="GW", help="Gateway address (on a port's subnet).")
@click.option("--port", metavar="P", help="Egress port (alone: a directly connected route).")
@click.option("--type", "rtype", metavar="T",
              help="unicast (default) | blackhole | unreachable | prohibit.")
@socket_option
def route_add(prefix: str, via: str | None, port: str | None, rtype: str | None,
              socket_path: str | None) -> None:
    """Add a route to PREFIX (a.b.c.d/len), checked like a [[route]] of the config.

    Takes effect on the next batch of every worker; an existing prefix is refused
    (delete it first)."""
    msg: dict[str, Any] = {"cmd": "route.add", "prefix": prefix}
    for k, v in (("via", via), ("port", port), ("type", rtype)):
        if v is not None:
            msg[k] = v
    r = _call(socket_path, msg)["route"]
    click.echo(f"added {_route_line(r)}")


@route.command("del")
@click.argument("prefix")
@socket_option
def route_del(prefix: str, socket_path: str | None) -> None:
    """Delete the route to PREFIX (a config or added one); the next less-specific
    route takes over its addresses."""
    r = _call(socket_path, {"cmd": "route.del", "prefix": prefix})["route"]
    click.echo(f"deleted {_route_line(r)}")


@route.command("show")
@click.option("--json", "as_json", is_flag=True, help="Print the routes as JSON.")
@click.option("--all", "show_all", is_flag=True,
              help="Also list the internal entries: local addresses, subnet broadcasts, "
                   "static neighbours.")
@socket_option
def route_show(as_json: bool, show_all: bool, socket_path: str | None) -> None:
    """List the routes: from the config, added since, and the connected subnets."""
    msg: dict[str, Any] = {"cmd": "route.show"}
    if show_all:
        msg["all"] = True
    routes = _call(socket_path, msg, timeout=60.0)["routes"]
    if as_json:
        click.echo(json.dumps(routes, indent=2))
        return
    for r in routes:
        click.echo(_route_line(r))


@route.command("load")
@click.argument("file", metavar="FILE")
@socket_option
def route_load(file: str, socket_path: str | None) -> None:
    """Add every route in FILE: one `prefix [via GW] [port P] [type T]` per line
    (blank lines and # comments skipped). All of them are added, or none: a bad line
    is reported with its number (exit status 1).

    FILE is read here, not by the engine, and must be an ordinary file (not a FIFO,
    a device or a /proc file) of at most 256 MiB: else exit status 2. A file larger
    than one request is sent in parts, applied together when the last one arrives."""
    from engine.cli.routefile import RouteFileError, read_route_file, split_parts

    try:
        parts = split_parts(file, read_route_file(file))
    except RouteFileError as err:
        click.echo(f"fwd: {err}", err=True)
        sys.exit(EXIT_CONFIG)
    msg: dict[str, Any] = {"cmd": "route.load"}
    for i, text in enumerate(parts):
        msg["text"] = text
        msg["more"] = i < len(parts) - 1
        reply = _call(socket_path, msg, timeout=600.0, what=f"{file}: ")
        if "load" in reply:  # the id of the staged load the next parts go to
            msg["load"] = reply["load"]
    n = reply["added"]
    click.echo(f"loaded {n} route{'s' if n != 1 else ''} from {file}")


@main.group()
def port() -> None:
    """Take the ports of a running engine up or down (through its control socket)."""


@port.command("up")
@click.argument("name")
@socket_option
def port_up(name: str, socket_path: str | None) -> None:
    """Bring port NAME up: packets may leave through it again."""
    r = _call(socket_path, {"cmd": "port.up", "name": name})
    click.echo(f"{name} up" if r["changed"] else f"{name} was already up")


@port.command("down")
@click.argument("name")
@socket_option
def port_down(name: str, socket_path: str | None) -> None:
    """Take port NAME down: from the next batch on no packet leaves through it (those
    routed there are dropped as port_down) and workers flush what they cached for it."""
    r = _call(socket_path, {"cmd": "port.down", "name": name})
    click.echo(f"{name} down" if r["changed"] else f"{name} was already down")


def _route_line(r: dict[str, Any]) -> str:
    via = ",".join(h["via"] for h in r["nexthops"]) if r.get("nexthops") else r.get("via")
    parts = [f"{r['prefix']:<18}", f"{r['type']:<11}"]
    parts.append(f"via {via:<15}" if via else " " * 19)
    parts.append(f"port {r['port']:<8}" if r.get("port") else " " * 13)
    flags = [r["origin"]] + (["shadowed"] if r.get("shadowed") else [])
    parts.append(",".join(flags))
    return " ".join(parts).rstrip()


# --- the namespace lab (engine/cli/lab.py) --------------------------------------------------

PREFIX_HELP = "Namespace name prefix: the lab is PREFIX-h1, PREFIX-h2 and PREFIX-r."


@main.group()
def lab() -> None:
    """A namespace lab: hosts h1 and h2 with the engine between them (needs root).

    \b
    fwd lab up
    fwd run configs/lab.toml              # in another terminal
    ip netns exec fwdlab-h1 ping 10.0.2.2
    fwd lab down
    """


@lab.command("up")
@click.option("--prefix", default="fwdlab", show_default=True, help=PREFIX_HELP)
@click.option("--p1-mtu", type=click.IntRange(68, 9000), metavar="MTU",
              help="A smaller MTU on the h2 side's link (set [[port]] mtu to match).")
@click.option("--host-offloads", is_flag=True,
              help="Leave h1's and h2's TSO/GSO/checksum offloads on (the kernel's "
                   "defaults) instead of turning them off.")
def lab_up(prefix: str, p1_mtu: int | None, host_offloads: bool) -> None:
    """Build the lab's namespaces and veths."""
    from engine.cli.lab import HOSTS, LabError, up

    try:
        built = up(prefix, p1_mtu=p1_mtu, host_offloads=host_offloads)
    except LabError as err:
        click.echo(f"fwd: {err}", err=True)
        sys.exit(1)
    click.echo(f"router namespace {built.router}: ports p0, p1 (no addresses, forwarding off)")
    for host, port, address, gateway in HOSTS:
        click.echo(f"host {built.host(host)}: eth0 {address} (link to {port}), "
                   f"default via {gateway}")


@lab.command("down")
@click.option("--prefix", default="fwdlab", show_default=True, help=PREFIX_HELP)
def lab_down(prefix: str) -> None:
    """Remove the lab's namespaces (and their veths)."""
    from engine.cli.lab import LabError, down

    try:
        removed = down(prefix)
    except LabError as err:
        click.echo(f"fwd: {err}", err=True)
        sys.exit(1)
    click.echo(f"removed {', '.join(removed)}" if removed else "no lab namespaces to remove")


# --- fwd bench (engine/cli/bench.py runs the perf/ scripts) ------------------------------


@main.command()
@click.option("--quick", is_flag=True,
              help="Smoke run (under two minutes): every benchmark in its --quick form.")
@click.option("--only", metavar="NAME[,NAME]",
              help="Run only these: fastpath, fib, slowpath, afpacket, dpdk, pcap, lab, l3fwd.")
@click.option("--runs", type=click.IntRange(1), default=5, show_default=True,
              help="Repetitions of every measurement (the median and spread are reported).")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), metavar="DIR",
              help="Where the JSON and plots go (default: perf/results/).")
@click.option("--no-plots", is_flag=True, help="Do not draw the PNG plots.")
def bench(quick: bool, only: str | None, runs: int, out_dir: str | None, no_plots: bool) -> None:
    """Run the performance suite: the perf/ scripts, each with its peer in the same run.

    Fast path per stage (ns/packet) and per batch size, worker scaling, the FIB at 1M
    prefixes against pytricia, the slow path, the AF_PACKET and DPDK drivers alone, and
    end to end: pcap, AF_PACKET in the namespace lab against Linux forwarding, DPDK
    vdevs against l3fwd and testpmd. Prints a table (median ± spread, ratio to the
    peer), writes perf/results/<date>-<host>.json and PNG plots beside it.

    The scripts are in perf/ of the source tree (next to the engine package; set
    FWD_PERF_DIR to point elsewhere) and need the `bench` extra (rich, matplotlib):
    pip install -e '.[bench,perf]'. What cannot run here (no root, no DPDK, no
    trafgen, no pytricia) is reported as skipped with the reason.
    """
    from engine.cli.bench import NAMES, run_suite

    names = None
    if only:
        names = [n.strip() for n in only.split(",") if n.strip()]
        unknown = sorted(set(names) - set(NAMES))
        if unknown:
            raise click.BadParameter(f"unknown benchmark(s) {', '.join(unknown)} "
                                     f"(known: {', '.join(NAMES)})", param_hint="--only")
    try:
        doc = run_suite(names, quick=quick, runs=runs,
                        out_dir=Path(out_dir) if out_dir else None, plots=not no_plots)
    except (FileNotFoundError, ModuleNotFoundError) as err:
        click.echo(f"fwd: {err}", err=True)
        sys.exit(1)
    failed = [n for n, b in doc["benchmarks"].items() if b["status"] == "failed"]
    if failed:
        click.echo(f"fwd: failed: {', '.join(failed)}", err=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
