"""The `fwd` command."""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from engine import __version__
from engine.cli import logs
from engine.config import LOG_LEVELS, Config, ConfigError, format_config_error, load_config
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
@click.option("--log-level", type=click.Choice(LOG_LEVELS), default=None,
              help="The least severe log line written to stderr (overrides [engine] "
                   "log_level; default info). info: start-up, route/port changes, "
                   "restarts; warning: only what went wrong.")
@click.option("--log-time/--no-log-time", default=None,
              help="Start each log line with the time and level. Default: on for an "
                   "engine that keeps running (live ports, --keep-running), off for a "
                   "replay; never under systemd's journal, which stamps lines itself "
                   "(there lines carry sd-daemon's <N> priority instead).")
def run(config: str, as_json: bool, keep_running: bool, socket_path: str | None,
        log_level: str | None, log_time: bool | None) -> None:
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
    from engine.workers.loop import name_process, set_title

    cfg = _load_or_exit(config)
    name_process("fwd")  # the control process, beside its fwd-worker-N and fwd-slowpath
    set_title(f"fwd: control {config}")
    explicit = socket_path or cfg.engine.control_socket
    # a long replay's progress bar: on a terminal, not for a reader of the JSON
    bar = ReplayProgress() if sys.stdout.isatty() and not as_json else None
    daemon = keep_running or any(p.driver != "pcap" for p in cfg.ports)
    say = logs.setup(log_level or cfg.engine.log_level,
                     daemon if log_time is None else log_time,
                     bar.say if bar else lambda line: click.echo(line, err=True))
    try:
        result = run_engine(cfg, control_socket=explicit or DEFAULT_SOCKET,
                            control_required=bool(explicit), keep_running=keep_running,
                            log=say, progress=bar.update if bar else None)
    except RunStopped as stop:
        if bar:
            bar.close()
        status = EXIT_CONFIG if isinstance(stop.cause, PcapError) else EXIT_FAULT
        _print_result(stop.result, as_json, {"error": str(stop), "status": status})
        say(f"fwd: {stop}", logging.ERROR)
        sys.exit(status)
    except PcapError as err:
        say(f"fwd: {err}", logging.ERROR)
        sys.exit(EXIT_CONFIG)
    except EngineError as err:
        say(f"fwd: {err}", logging.ERROR)
        sys.exit(EXIT_FAULT)
    finally:
        if bar:
            bar.close()
    _print_result(result, as_json)
    if not result.stats.balanced:
        say("fwd: counters do not balance: a frame was lost or counted twice", logging.ERROR)
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
          what: str = "", refused: int = EXIT_FAULT) -> dict[str, Any]:
    """The engine's reply to `msg`; a message (after `what`, when it is an error reply)
    and exit 1 if there is none, exit `refused` if the engine refused the request
    (route and port commands: 2, bad input; an internal error is always 1)."""
    from engine.cli.client import ControlError, default_socket, request

    try:
        reply = request(socket_path or default_socket(), msg, timeout=timeout)
    except ControlError as err:
        click.echo(f"fwd: {err}", err=True)
        sys.exit(1)
    if not reply.get("ok"):
        error = str(reply.get("error", "the engine refused the request"))
        click.echo(f"fwd: {what}{error}", err=True)
        sys.exit(EXIT_FAULT if error.startswith("internal error") else refused)
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
@click.argument("expression", nargs=-1)
@click.option("--at", "point", type=click.Choice(["rx", "tx", "drop"]), default="rx",
              show_default=True,
              help="rx: as received (before any rewrite); tx: as the fast path sends them; "
                   "drop: what the fast path drops (reasons are printed at the end).")
@click.option("-w", "--write", "path", required=True, type=click.Path(dir_okay=False,
                                                                     allow_dash=True),
              help="The file to write; - for standard output, written as frames come "
                   "(fwd capture p0 -w - | tcpdump -r -). A port: classic pcap, as tcpdump "
                   "-w; any: pcapng with one interface per port, so a reader sees which "
                   "port each frame used.")
@click.option("--count", type=click.IntRange(1), default=None,
              help="Stop after this many frames (default: until Ctrl-C or --duration).")
@click.option("--duration", type=click.FloatRange(0), default=None,
              help="Stop after this many seconds.")
@socket_option
def capture(port_name: str, expression: tuple[str, ...], point: str, path: str,
            count: int | None, duration: float | None, socket_path: str | None) -> None:
    """Write the frames seen on PORT (or `any`) at a point of the fast path to a file
    that tcpdump and Wireshark read; EXPRESSION, when given, is a tcpdump filter
    (`fwd capture p0 -w x.pcap udp and dst host 10.0.2.2`), compiled by libpcap, and
    only matching frames are written (and counted by --count). Capturing never slows
    forwarding down: frames a full capture ring cannot take are counted as lost."""
    import time

    from engine.cli.bpf import Filter, FilterError
    from engine.counters import Drop
    from engine.io.pcap import PcapError, PcapngWriter, PcapWriter, cannot_write

    msg: dict[str, Any] = {"cmd": "capture.start", "at": point}
    if port_name != "any":
        msg["port"] = port_name
    match = None
    if expression:
        try:
            match = Filter(" ".join(expression))
        except FilterError as err:
            click.echo(f"fwd: capture: {err}", err=True)
            sys.exit(EXIT_CONFIG)
    # `any` names each frame's port: pcapng interfaces, in the engine's port order
    ports = ([r["name"] for r in _call(socket_path, {"cmd": "port.show"})["ports"]]
             if port_name == "any" else None)
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
        writer = PcapWriter(out) if ports is None else PcapngWriter(out, ports)
        while count is None or writer.frames < count:
            want = 4096 if count is None else min(4096, count - writer.frames)
            # unfiltered, the engine sends no more than asked; filtered, what it has
            reply = _call(socket_path, {"cmd": "capture.read", "gen": gen,
                                        "max": want if match is None else 4096})
            frames = reply["frames"]
            if match is not None:
                frames = [f for f in frames if match.matches(f[4])]
            frames = frames[:want]
            if ports is None:
                writer.write([f[4] for f in frames], [f[0] for f in frames])
            else:
                writer.write([f[4] for f in frames], [f[0] for f in frames],
                             [f[2] for f in frames])
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


ROUTE_WORDS_HELP = """\b
  [TYPE] PREFIX [via GW] [dev PORT] [metric N]
  [TYPE] PREFIX [metric N] nexthop via GW [dev PORT] nexthop via GW [dev PORT] ...
TYPE: unicast (default), blackhole, unreachable, prohibit; PREFIX a.b.c.d/len or
default. `nexthop` members make an ECMP route (one member per flow). The older
options --via GW (twice or more: ECMP), --port P and --type T say the same.
METRIC is kept and shown, not a preference: the FIB holds one route per prefix."""


def _route_words(words: tuple[str, ...], via: tuple[str, ...], port: str | None,
                 rtype: str | None, what: str) -> dict[str, Any]:
    """The route table of `fwd route add|replace` words and options; exit 2 with one
    line when they do not make a route."""
    from engine.control.routespec import RouteWordsError, parse_route_words

    extra: list[str] = []
    if rtype is not None:
        extra += ["type", rtype]
    if len(via) > 1:  # several gateways: ECMP, never the last one alone
        for gw in via:
            extra += ["nexthop", "via", gw] + (["dev", port] if port else [])
    else:
        extra += (["via", via[0]] if via else []) + (["dev", port] if port else [])
    try:
        return parse_route_words(list(words) + extra)
    except RouteWordsError as err:
        click.echo(f"fwd: route {what}: {err}", err=True)
        sys.exit(EXIT_CONFIG)


def _route_change(what: str, words: tuple[str, ...], via: tuple[str, ...], port: str | None,
                  rtype: str | None, socket_path: str | None) -> None:
    from engine.control.routespec import route_words

    table = _route_words(words, via, port, rtype, what)
    reply = _call(socket_path, {"cmd": f"route.{what}", **table}, what=f"route {what}: ",
                  refused=EXIT_CONFIG)
    click.echo(f"{reply['status']} {route_words(reply['route'])}")


def _route_options(f: Callable[..., Any]) -> Callable[..., Any]:
    f = click.option("--type", "rtype", metavar="T", hidden=True)(f)
    f = click.option("--port", metavar="P", hidden=True)(f)
    f = click.option("--via", metavar="GW", multiple=True, hidden=True)(f)
    return click.argument("words", nargs=-1, required=True,
                          metavar="[TYPE] PREFIX [via GW] [dev PORT] ...")(f)


@main.group()
def route() -> None:
    """Show and change the routes of a running engine (through its control socket),
    in iproute2's words: add, replace, del, flush, show, load, save."""


@route.command("add", epilog=ROUTE_WORDS_HELP,
               short_help="Add a route (ip route add); an existing prefix: File exists.")
@_route_options
@socket_option
def route_add(words: tuple[str, ...], via: tuple[str, ...], port: str | None,
              rtype: str | None, socket_path: str | None) -> None:
    """Add a route, checked like a [[route]] of the config (`ip route add`).

    It takes effect on every worker's next batch. A prefix that already has a route
    is refused ("File exists", exit 2), whatever the metric: use `replace`.

    \b
    fwd route add 10.9.0.0/16 via 10.0.2.254 dev p1
    fwd route add 10.8.0.0/16 nexthop via 10.0.2.254 nexthop via 10.0.3.2
    fwd route add blackhole 10.7.0.0/16
    """
    _route_change("add", words, via, port, rtype, socket_path)


@route.command("replace", epilog=ROUTE_WORDS_HELP,
               short_help="Add a route or change it in place (ip route replace).")
@_route_options
@socket_option
def route_replace(words: tuple[str, ...], via: tuple[str, ...], port: str | None,
                  rtype: str | None, socket_path: str | None) -> None:
    """Add a route or change the one its prefix has (`ip route replace`).

    The FIB entry takes the new next hop in place (no packet falls to a shorter
    prefix meanwhile); says added, changed or unchanged. A changed route's origin
    becomes cli: a config reload (SIGHUP) keeps it, as it keeps every cli route."""
    _route_change("replace", words, via, port, rtype, socket_path)


@route.command("del", short_help="Delete the routes to PREFIX... (all or none).")
@click.argument("prefixes", metavar="PREFIX... | [TYPE] PREFIX [via GW] [dev P] [metric N]",
                nargs=-1, required=True)
@socket_option
def route_del(prefixes: tuple[str, ...], socket_path: str | None) -> None:
    """Delete the routes to PREFIX... (config or cli ones) in one request: all of them,
    or none when one has no route (exit 2). The next less-specific route takes over
    their addresses. Connected and local entries come from the ports' addresses and
    are not deleted here.

    One route in `route add`'s words deletes it only if it is so (as `ip route del`
    matches): `fwd route del blackhole 10.7.0.0/16`, `fwd route del 10.9.0.0/16 via
    10.0.2.254`."""
    from engine.control.routespec import route_words

    msg: dict[str, Any] = {"cmd": "route.del"}
    if all(p[:1].isdigit() for p in prefixes):
        msg.update({"prefix": prefixes[0]} if len(prefixes) == 1
                   else {"prefixes": list(prefixes)})
    else:  # one route and what it must be
        table = _route_words(prefixes, (), None, None, "del")
        if "nexthops" in table:
            click.echo("fwd: route del: name one gateway (via GW) to match, not nexthops",
                       err=True)
            sys.exit(EXIT_CONFIG)
        msg["prefix"] = table.pop("prefix")
        if table:
            msg["match"] = table
    for r in _call(socket_path, msg, timeout=600.0, what="route del: ",
                   refused=EXIT_CONFIG)["routes"]:
        click.echo(f"deleted {route_words(r)}")


@route.command("flush", short_help="Delete the routes inside a prefix and/or of an "
                                  "origin.")
@click.argument("selector", nargs=-1)
@socket_option
def route_flush(selector: tuple[str, ...], socket_path: str | None) -> None:
    """Delete the routes a selector picks, in one request:

    \b
      fwd route flush origin cli       every route added with fwd route (proto cli)
      fwd route flush origin config    every route from the config (until a reload)
      fwd route flush 10.0.0.0/8       every route inside 10.0.0.0/8 (itself included)
      fwd route flush 10.0.0.0/8 origin cli      both
    Without a selector nothing is flushed (exit 2), as `ip route flush` wants one.
    Connected, local and neighbour entries are never flushed: they come from the
    ports' addresses and the [[neighbor]]s."""
    msg: dict[str, Any] = {"cmd": "route.flush"}
    words = list(selector)
    while words:
        word = words.pop(0)
        if word in ("origin", "proto"):  # proto: iproute2's name for it
            if not words:
                click.echo(f"fwd: route flush: {word!r} needs a value (cli or config)",
                           err=True)
                sys.exit(EXIT_CONFIG)
            msg["origin"] = words.pop(0)
        elif "prefix" not in msg and (word[:1].isdigit() or word == "default"):
            msg["prefix"] = "0.0.0.0/0" if word == "default" else word
        else:
            click.echo(f"fwd: route flush: unknown word {word!r} (expected a prefix and/or "
                       "origin cli|config)", err=True)
            sys.exit(EXIT_CONFIG)
    routes = _call(socket_path, msg, timeout=600.0, what="route flush: ",
                   refused=EXIT_CONFIG)["routes"]
    click.echo(f"flushed {len(routes)} route{'s' if len(routes) != 1 else ''}")


@route.command("show", short_help="List the routes: prefix, type, next hops, metric, "
                                 "origin.")
@click.option("--json", "as_json", is_flag=True, help="Print the routes as JSON.")
@click.option("--all", "show_all", is_flag=True,
              help="Also list the internal entries: local addresses, subnet broadcasts, "
                   "static neighbours.")
@socket_option
def route_show(as_json: bool, show_all: bool, socket_path: str | None) -> None:
    """List the routes: from the config, from fwd route (origin cli), and the connected
    subnets; one line per route (an ECMP route: one more line per member), under a
    header: prefix, type, next hop (via GW dev PORT), metric, origin."""
    msg: dict[str, Any] = {"cmd": "route.show"}
    if show_all:
        msg["all"] = True
    routes = _call(socket_path, msg, timeout=60.0)["routes"]
    if as_json:
        click.echo(json.dumps(routes, indent=2))
        return
    click.echo(_route_table(routes))


@route.command("load", short_help="Replace every route of FILE; count what changed.")
@click.argument("file", metavar="FILE")
@socket_option
def route_load(file: str, socket_path: str | None) -> None:
    """Replace (`ip route replace`) every route in FILE, one route per line in
    `fwd route add`'s words (blank lines and # comments skipped), and say how many
    were added, changed and unchanged: loading a file twice changes nothing the
    second time. All lines are applied, or none: a bad line is reported with its
    number (exit status 2). Routes not in FILE stay (`flush` removes them).

    FILE is read here, not by the engine, and must be an ordinary file (not a FIFO,
    a device or a /proc file) of at most 256 MiB: else exit status 2. The whole file
    is one request; one larger than a request is sent in parts, applied together
    when the last one arrives."""
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
        reply = _call(socket_path, msg, timeout=600.0, what=f"{file}: ", refused=EXIT_CONFIG)
        if "load" in reply:  # the id of the staged load the next parts go to
            msg["load"] = reply["load"]
    n = reply["added"] + reply["changed"] + reply["unchanged"]
    click.echo(f"loaded {n} route{'s' if n != 1 else ''} from {file}: {reply['added']} "
               f"added, {reply['changed']} changed, {reply['unchanged']} unchanged")


@route.command("save", short_help="Write the cli routes as [[route]]s a config "
                                 "includes.")
@click.argument("file", metavar="[FILE]", required=False)
@click.option("--origin", type=click.Choice(["cli", "config", "all"]), default="cli",
              show_default=True, help="Which routes: those added with fwd route, those "
                                      "from the config, or both.")
@socket_option
def route_save(file: str | None, origin: str, socket_path: str | None) -> None:
    """Write the routes added with fwd route as [[route]] tables (TOML) to FILE, or to
    standard output: a fragment the config includes with `include = ["FILE"]` (a
    path relative to the config's folder), so that a restart keeps them."""
    from engine.cli.routefile import RouteFileError, routes_toml, write_text

    routes = _call(socket_path, {"cmd": "route.show"}, timeout=60.0)["routes"]
    chosen = [r for r in routes
              if r["origin"] == origin or (origin == "all" and r["origin"] in ("cli", "config"))]
    text = routes_toml(chosen, origin)
    if file is None or file == "-":
        click.echo(text, nl=False)
        return
    try:
        write_text(file, text)
    except RouteFileError as err:
        click.echo(f"fwd: {err}", err=True)
        sys.exit(EXIT_CONFIG)
    click.echo(f"saved {len(chosen)} route{'s' if len(chosen) != 1 else ''} to {file}")


@main.group()
def port() -> None:
    """Show the ports of a running engine, take them up or down, change their MTU
    (through its control socket)."""


@port.command("up")
@click.argument("name")
@socket_option
def port_up(name: str, socket_path: str | None) -> None:
    """Bring port NAME up: packets may leave through it again."""
    r = _call(socket_path, {"cmd": "port.up", "name": name}, refused=EXIT_CONFIG)
    click.echo(f"{name} up" if r["changed"] else f"{name} was already up")


@port.command("down")
@click.argument("name")
@socket_option
def port_down(name: str, socket_path: str | None) -> None:
    """Take port NAME down: from the next batch on no packet leaves through it (those
    routed there are dropped as port_down) and workers flush what they cached for it."""
    r = _call(socket_path, {"cmd": "port.down", "name": name}, refused=EXIT_CONFIG)
    click.echo(f"{name} down" if r["changed"] else f"{name} was already down")


@port.command("show", short_help="State, MTU, MAC, addresses, counters, drops by "
                                 "reason.")
@click.argument("name", required=False)
@click.option("--json", "as_json", is_flag=True, help="Print the ports as JSON.")
@socket_option
def port_show(name: str | None, as_json: bool, socket_path: str | None) -> None:
    """Show every port, or port NAME, as `ip -s link` does: state (up/down as `fwd
    port up|down` set it), carrier when the driver knows it (AF_PACKET), MTU, MAC,
    addresses, RX and TX bytes and packets, drops; then the drops by reason: those
    of the fast path for frames received on the port, and the driver's own
    (driver_rx: frames it could not take in)."""
    from engine.control.stats import format_ports

    msg: dict[str, Any] = {"cmd": "port.show"}
    if name is not None:
        msg["name"] = name
    ports = _call(socket_path, msg, what="port show: ", refused=EXIT_CONFIG)["ports"]
    if as_json:
        click.echo(json.dumps(ports if name is None else ports[0], indent=2))
        return
    click.echo(format_ports(ports))


@port.command("set", short_help="Change a port at run time: mtu N.")
@click.argument("name")
@click.argument("words", nargs=-1, required=True, metavar="mtu N")
@socket_option
def port_set(name: str, words: tuple[str, ...], socket_path: str | None) -> None:
    """Change port NAME at run time (`ip link set NAME mtu N`): `mtu N` (68..9000).

    From every worker's next batch on, the fast path's MTU check and the slow path
    (fragmentation, the MTU an ICMP fragmentation-needed carries) use the new MTU.
    It is the engine's MTU: an AF_PACKET interface keeps its own (set it with ip
    link); a dpdk port's is fixed at start. A restart takes the config's again."""
    if len(words) != 2 or words[0] != "mtu":
        click.echo(f"fwd: port set: expected `mtu N`, got {' '.join(words)!r}", err=True)
        sys.exit(EXIT_CONFIG)
    if not words[1].isdigit():
        click.echo(f"fwd: port set: mtu {words[1]!r} is not a number", err=True)
        sys.exit(EXIT_CONFIG)
    r = _call(socket_path, {"cmd": "port.set", "name": name, "mtu": int(words[1])},
              what="port set: ", refused=EXIT_CONFIG)
    click.echo(f"{name} mtu {r['mtu']}" + (f" (was {r['old']})" if r["changed"]
                                           else " (unchanged)"))


def _route_table(routes: list[dict[str, Any]]) -> str:
    """`fwd route show`'s text: a header, then one line per route, an ECMP route's
    further members on lines of their own (as `ip route` prints them)."""
    from engine.control.routespec import nexthop_words

    lines = [f"{'prefix':<18} {'type':<11} {'nexthop':<32} {'metric':>6}  origin"]
    for r in routes:
        words = nexthop_words(r)
        hops = [" ".join(words)]
        if r.get("nexthops"):
            hops, member = [], []
            for w in words:
                if w == "nexthop" and member:
                    hops.append(" ".join(member))
                    member = []
                member.append(w)
            hops.append(" ".join(member))
        origin = r["origin"] + (",shadowed" if r.get("shadowed") else "")
        lines.append(f"{r['prefix']:<18} {r['type']:<11} {hops[0]:<32} "
                     f"{r.get('metric', 0):>6}  {origin}")
        lines += [f"{'':<18} {'':<11} {h}" for h in hops[1:]]
    return "\n".join(line.rstrip() for line in lines)


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
