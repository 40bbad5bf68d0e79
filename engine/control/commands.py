"""The control socket's commands: what each request may carry (`COMMANDS`), its check
(`check_request`), and what it does over the control plane's objects (`Commands`).
Served by engine/control/server.py; the wire format is engine/control/wire.py.

Nothing in a request is ever evaluated: it is only compared, parsed as an address or
prefix, or looked up.

Commands (arguments; reply fields):
    ping                                   pid, version, socket, segments
    stats                                  stats: Snapshot.as_dict() + workers (one row
                                           per agent), fib (tbl8 usage), port_state,
                                           rings ({name: [used, size]}), pool
                                           (buffers, free), batch
    route.add    prefix, [via], [port], [type],   route (the row route.show gives),
                 [nexthops: [{via, [port]}]],     status: added; an existing prefix
                 [metric: int]                    is refused ("File exists")
    route.replace  as route.add                   route, status: added | changed |
                                                  unchanged (`ip route replace`)
    route.del    prefix | prefixes: [str],        routes (the deleted ones), route (the
                 [match: {type, via, port,        first): all of them or none; with
                 metric}]                         match, prefix's route only if it is so
    route.flush  [prefix], [origin]               routes (the deleted ones): the config
                                                  and cli routes inside prefix and/or
                                                  of origin; at least one selector
    route.show   [all: bool]                      routes: rows (internal entries with all)
    route.load   text, [load], [more: bool]       added, changed, unchanged: counts (all
                                                  lines or none; each line replaces);
                                                  with more: load, staged (see below)
    route.lookup addr                             addr, route, nexthop (a debug aid)
    port.up      name                             port, up, changed
    port.down    name                             port, up, changed
    port.show    [name]                           ports: [{name, driver, up, carrier,
                                                  mtu, mac, addresses, counters, drops}]
    port.set     name, mtu: int                   port, mtu, old, changed
    trace.start  count, [port]                    gen, count (engine/observe/trace.py)
    trace.read   gen                              records (oldest first), done
    trace.stop                                    -
    capture.start [port], [at: rx|tx|drop]        gen (engine/observe/capture.py)
    capture.read gen, [max]                       frames: [ts, seq, port, reason, bytes],
                                                  lost (refused by full rings)
    capture.stop                                  -

route.load carries route text, never a file name: the engine opens no path a request
names (`fwd route load FILE` reads the file). A load larger than one request
(`MAX_REQUEST`) is sent in parts, split at line ends: the first part has `more` and
gets a `load` id back, each further part names that `load`, the last has no `more`.
Every part is checked when it arrives (lines numbered on across parts) and staged;
the last one applies them all, or none. A part that fails discards the whole load.
A staged load that gets no part for `STAGE_TIMEOUT_S` is dropped; at most
`MAX_STAGED` are open at once and each carries at most `LOAD_MAX` characters.
"""

from __future__ import annotations

import os
import secrets
import sys
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from engine import __version__
from engine.config import RouteConfig, type_name
from engine.control.wire import LOAD_MAX, RequestError, error

MAX_STAGED = 4  # route loads sent in parts that may be open at once
STAGE_TIMEOUT_S = 30.0  # a staged load with no part for this long is dropped

# a route as route.add and route.replace take it: a [[route]] table (RouteChecker checks
# the values, nexthops' members included)
ROUTE_ARGS: dict[str, tuple[type, bool]] = {
    "prefix": (str, True), "via": (str, False), "port": (str, False), "type": (str, False),
    "nexthops": (list, False), "metric": (int, False)}
MAX_DELETE = 1 << 16  # prefixes one route.del may name
MATCH_KEYS: dict[str, type] = {"type": str, "via": str, "port": str, "metric": int}

# cmd -> {argument: (type, required)}; bool is checked exactly (not as an int)
COMMANDS: dict[str, dict[str, tuple[type, bool]]] = {
    "ping": {},
    "stats": {},
    "route.add": ROUTE_ARGS,
    "route.replace": ROUTE_ARGS,
    "route.del": {"prefix": (str, False), "prefixes": (list, False), "match": (dict, False)},
    "route.flush": {"prefix": (str, False), "origin": (str, False)},
    "route.show": {"all": (bool, False)},
    "route.load": {"text": (str, True), "load": (int, False), "more": (bool, False)},
    "route.lookup": {"addr": (str, True)},
    "port.up": {"name": (str, True)},
    "port.down": {"name": (str, True)},
    "port.show": {"name": (str, False)},
    "port.set": {"name": (str, True), "mtu": (int, True)},
    "trace.start": {"count": (int, True), "port": (str, False)},
    "trace.read": {"gen": (int, True)},
    "trace.stop": {},
    "capture.start": {"port": (str, False), "at": (str, False)},
    "capture.read": {"gen": (int, True), "max": (int, False)},
    "capture.stop": {},
}

# what the FIB writer's thread must run (engine/control/server.py `on_main`): writes of
# the FIB, next hops or port state, and reads of the routing's Python structures that
# those writes change; everything else reads shared memory only
ON_MAIN = frozenset({"route.add", "route.replace", "route.del", "route.flush", "route.show",
                     "route.load", "route.lookup", "port.up", "port.down", "port.set"})

# (cmd, argument) -> why it is refused: arguments that used to exist, so that an old
# client gets a reason rather than "unknown argument"
REMOVED: dict[tuple[str, str], str] = {
    ("route.load", "path"): "the engine does not open files a request names; send the "
                            "routes as text (`fwd route load FILE` reads the file itself)",
}

_TYPE_NAMES = {str: "a string", bool: "a boolean", int: "an integer", list: "an array",
               dict: "a map"}


def _kind(value: object) -> str:
    return type_name(value, table="a map")


def check_request(msg: object) -> tuple[str, dict[str, Any]]:
    """(cmd, arguments) of a well-formed request; RequestError otherwise."""
    if not isinstance(msg, dict):
        raise RequestError(f"a request is a map {{'cmd': ...}}, got {_kind(msg)}")
    cmd = msg.get("cmd")
    if cmd is None:
        raise RequestError("request has no 'cmd'")
    if not isinstance(cmd, str):
        raise RequestError(f"'cmd' must be a string, got {_kind(cmd)}")
    spec = COMMANDS.get(cmd)
    if spec is None:
        raise RequestError(f"unknown command {cmd[:64]!r} (commands: {', '.join(COMMANDS)})")
    args: dict[str, Any] = {}
    for k, v in msg.items():
        if k == "cmd":
            continue
        if isinstance(k, str) and (cmd, k) in REMOVED:
            raise RequestError(f"{cmd}: {k} is refused: {REMOVED[cmd, k]}")
        if not isinstance(k, str) or k not in spec:
            known = ", ".join(spec) or "none"
            raise RequestError(f"{cmd}: unknown argument {str(k)[:64]!r} (arguments: {known})")
        kind = spec[k][0]
        if not isinstance(v, kind) or (kind is not bool and isinstance(v, bool)):
            raise RequestError(f"{cmd}: {k} must be {_TYPE_NAMES[kind]}, got {_kind(v)}")
        args[k] = v
    for k, (_, required) in spec.items():
        if required and k not in args:
            raise RequestError(f"{cmd}: {k} is required")
    return cmd, args


@dataclass
class _Staged:
    """A route load sent in parts: what its parts carried, checked, not yet applied."""

    routes: list[tuple[int, RouteConfig]] = field(default_factory=list)
    seen: dict[tuple[int, int], int] = field(default_factory=dict)  # prefix -> line
    lines: int = 0  # lines so far: the next part's first line is lines + 1
    chars: int = 0
    touched: float = field(default_factory=time.monotonic)


class Commands:
    """What each command does, over the control plane's objects. The server calls
    `handle` with each decoded request; tests may call it directly."""

    def __init__(self, routing: Any, mem: Any, info: dict[str, Any] | None = None,
                 log: Callable[..., None] | None = None) -> None:
        self.routing = routing
        self.mem = mem
        self.info = dict(info or {})
        self.log = log  # log(line): one line per change of the routes or ports
        self._staged: dict[int, _Staged] = {}
        self._writer = threading.get_ident()  # the FIB writer's thread: the one building us

    @staticmethod
    def on_main(msg: object) -> bool:
        """Whether the FIB writer's thread must run this request (a malformed one is
        answered anywhere: it changes nothing)."""
        cmd = msg.get("cmd") if isinstance(msg, dict) else None
        return isinstance(cmd, str) and cmd in ON_MAIN

    def handle(self, msg: object) -> dict[str, Any]:
        """A reply map for any request; never raises."""
        from engine.control.routing import RouteError
        from engine.observe.capture import CaptureError
        from engine.observe.trace import TraceError

        try:
            cmd, args = check_request(msg)
            reply = getattr(self, "cmd_" + cmd.replace(".", "_"))(**args)
            if self.log is not None and cmd in CHANGES:
                line = change_line(cmd, reply)
                if line:
                    self.log(f"fwd: {line}")
            return {"ok": True, **reply}
        except (RequestError, RouteError, TraceError, CaptureError) as err:
            return error(str(err))
        except Exception as err:  # a bug must not take the engine down: say it, go on
            traceback.print_exc(file=sys.stderr)
            return error(f"internal error: {type(err).__name__}: {err}")

    def cmd_ping(self) -> dict[str, Any]:
        return {"pid": os.getpid(), "version": __version__, **self.info}

    def cmd_stats(self) -> dict[str, Any]:
        from engine.control.stats import agent_rows, snapshot

        s = snapshot(self.mem, self.routing.port_names).as_dict()
        s["workers"] = agent_rows(self.mem)
        # another thread only reads: the writer's thread reclaims (supervisor's loop)
        s["fib"] = self.routing.fib.stats(reclaim=threading.get_ident() == self._writer)
        s["port_state"] = self.routing.ports()
        s["rings"] = ring_levels(self.mem)
        s["pool"] = pool_level(self.mem)
        if "batch" in self.info:
            s["batch"] = self.info["batch"]
        return {"stats": s}

    def cmd_route_add(self, prefix: str, **rest: Any) -> dict[str, Any]:
        route, status = self.routing.add({"prefix": prefix, **rest})
        return {"route": route.as_dict(), "status": status}

    def cmd_route_replace(self, prefix: str, **rest: Any) -> dict[str, Any]:
        route, status = self.routing.add({"prefix": prefix, **rest}, replace=True)
        return {"route": route.as_dict(), "status": status}

    def cmd_route_del(self, prefix: str | None = None, prefixes: list[Any] | None = None,
                      match: dict[str, Any] | None = None) -> dict[str, Any]:
        if (prefix is None) == (prefixes is None):
            raise RequestError("route.del: prefix is required (or prefixes: an array of "
                               "them), not both")
        if match is not None:
            if prefix is None:
                raise RequestError("route.del: match goes with one prefix, not prefixes")
            for k, v in match.items():
                if k not in MATCH_KEYS or not isinstance(v, MATCH_KEYS[k]) \
                        or isinstance(v, bool):
                    raise RequestError(f"route.del: match takes {', '.join(MATCH_KEYS)} "
                                       f"(strings, metric an integer), got {str(k)[:64]!r}")
            route = self.routing.delete_matching({**match, "prefix": prefix})
            return {"route": route.as_dict(), "routes": [route.as_dict()]}
        names = [prefix] if prefix is not None else prefixes or []
        if not names or len(names) > MAX_DELETE:
            raise RequestError(f"route.del: prefixes must name 1 to {MAX_DELETE} prefixes")
        for p in names:
            if not isinstance(p, str):
                raise RequestError(f"route.del: prefixes must be strings, got {_kind(p)}")
        deleted = self.routing.delete_many(names)
        return {"route": deleted[0].as_dict(), "routes": [r.as_dict() for r in deleted]}

    def cmd_route_flush(self, prefix: str | None = None,
                        origin: str | None = None) -> dict[str, Any]:
        return {"routes": [r.as_dict() for r in self.routing.flush(prefix, origin)]}

    def cmd_route_show(self, **args: bool) -> dict[str, Any]:  # "all" is the wire name
        return {"routes": self.routing.show(internal=args.get("all", False))}

    def cmd_route_load(self, text: str, load: int | None = None,
                       more: bool = False) -> dict[str, Any]:
        now = time.monotonic()
        for key in [k for k, st in self._staged.items() if now - st.touched > STAGE_TIMEOUT_S]:
            del self._staged[key]
        if load is None and not more:  # the whole load in one request (MAX_REQUEST bounds it)
            return self.routing.load(text)
        if load is None:
            if len(self._staged) >= MAX_STAGED:
                raise RequestError(f"route.load: {MAX_STAGED} loads are already being sent "
                                   f"in parts; try again when one is done (or in "
                                   f"{STAGE_TIMEOUT_S:.0f} s)")
            load = secrets.randbits(62)  # unguessable: one client cannot finish another's
            self._staged[load] = _Staged()
        staged = self._staged.get(load)
        if staged is None:
            raise RequestError(f"route.load: no load {load} is being staged (it failed, was "
                               f"applied, or got no part for {STAGE_TIMEOUT_S:.0f} s)")
        try:
            staged.chars += len(text)
            if staged.chars > LOAD_MAX:
                raise RequestError(f"route.load: more than {LOAD_MAX} characters")
            staged.routes += self.routing.check_load(text, staged.lines + 1, staged.seen)
            staged.lines += len(text.splitlines())
        except BaseException:
            del self._staged[load]  # a bad part fails the whole load: nothing is applied
            raise
        if more:
            staged.touched = time.monotonic()
            return {"load": load, "staged": len(staged.routes)}
        del self._staged[load]
        return self.routing.apply_load(staged.routes)

    def cmd_route_lookup(self, addr: str) -> dict[str, Any]:
        return self.routing.lookup(addr)

    def _port(self, name: str, up: bool) -> dict[str, Any]:
        changed = self.routing.set_port(name, up)
        return {"port": name, "up": up, "changed": changed}

    def cmd_port_up(self, name: str) -> dict[str, Any]:
        return self._port(name, True)

    def cmd_port_down(self, name: str) -> dict[str, Any]:
        return self._port(name, False)

    def cmd_port_show(self, name: str | None = None) -> dict[str, Any]:
        """Each port as `ip -s link` shows it: state, carrier, MTU, MAC, addresses,
        the driver's rx/tx counters and the fast path's drops by reason (read from
        shared memory: answered at once, from any thread)."""
        from engine.control.stats import port_rows

        names = list(self.routing.port_names)
        if name is not None and name not in names:
            raise RequestError(f"port.show: no port {name[:64]!r} (ports: {', '.join(names)})")
        rows = port_rows(self.mem, self.routing.cfg, self.routing.ports())
        return {"ports": [r for r in rows if name is None or r["name"] == name]}

    def cmd_port_set(self, name: str, mtu: int) -> dict[str, Any]:
        old = self.routing.set_mtu(name, mtu)
        return {"port": name, "mtu": mtu, "old": old, "changed": old != mtu}

    def _port_index(self, cmd: str, name: str | None) -> int | None:
        if name is None:
            return None
        names = list(self.routing.port_names)
        if name not in names:
            raise RequestError(f"{cmd}: no port {name[:64]!r} (ports: {', '.join(names)})")
        return names.index(name)

    def cmd_trace_start(self, count: int, port: str | None = None) -> dict[str, Any]:
        from engine.observe import trace

        gen = trace.arm(self.mem, count, self._port_index("trace.start", port))
        return {"gen": gen, "count": count}

    def cmd_trace_read(self, gen: int) -> dict[str, Any]:
        from engine.observe import trace

        rec = trace.collect(self.mem, gen)
        return {"records": trace.to_dicts(rec), "ports": list(self.routing.port_names),
                "done": len(rec) >= int(self.mem.obs_ctl[trace.TRACE_WANT])}

    def cmd_trace_stop(self) -> dict[str, Any]:
        from engine.observe import trace

        trace.disarm(self.mem)
        return {}

    def cmd_capture_start(self, port: str | None = None, at: str = "rx") -> dict[str, Any]:
        from engine.observe import capture

        return {"gen": capture.arm(self.mem, self._port_index("capture.start", port), at)}

    def cmd_capture_read(self, gen: int, **args: int) -> dict[str, Any]:  # "max": wire name
        from engine.observe import capture

        most = args.get("max", 4096)
        if not 1 <= most <= 65536:
            raise RequestError(f"capture.read: max must be between 1 and 65536, got {most}")
        frames, lost = capture.drain(self.mem, gen, max_frames=most)
        return {"frames": [list(f) for f in frames], "lost": lost}

    def cmd_capture_stop(self) -> dict[str, Any]:
        from engine.observe import capture

        capture.disarm(self.mem)
        return {}


# the requests that change the router: each logged in one line once applied
CHANGES = ("route.add", "route.replace", "route.del", "route.flush", "route.load",
           "port.up", "port.down", "port.set")


def route_words(row: dict[str, Any]) -> str:
    """A route row (Route.as_dict) in `ip route`'s words."""
    words = [row["prefix"]] if row["type"] == "unicast" else [row["type"], row["prefix"]]
    for hop in row.get("nexthops") or [{"via": row.get("via"), "port": row.get("port")}]:
        if len(row.get("nexthops") or ()) > 1:
            words.append("nexthop")
        if hop.get("via"):
            words += ["via", hop["via"]]
        if hop.get("port"):
            words += ["dev", hop["port"]]
    if row.get("metric"):
        words += ["metric", str(row["metric"])]
    return " ".join(words)


def change_line(cmd: str, reply: dict[str, Any]) -> str | None:
    """The log line of an applied change (None: nothing changed, nothing to say)."""
    verb = cmd.replace(".", " ")
    if cmd in ("route.add", "route.replace"):
        if reply.get("status") == "unchanged":
            return None
        return f"{verb} {route_words(reply['route'])}: {reply.get('status', 'added')}"
    if cmd in ("route.del", "route.flush"):
        rows = reply.get("routes") or []
        if not rows:
            return None
        shown = ", ".join(route_words(r) for r in rows[:4])
        more = f" and {len(rows) - 4} more" if len(rows) > 4 else ""
        return f"{verb}: {len(rows)} route{'s' if len(rows) != 1 else ''} ({shown}{more})"
    if cmd == "route.load":
        if "staged" in reply:  # a part of a load: said once the last part applies it
            return None
        return f"{verb}: " + ", ".join(f"{reply.get(k, 0)} {k}"
                                      for k in ("added", "changed", "unchanged"))
    if cmd in ("port.up", "port.down"):
        return f"port {reply['port']} {'up' if reply['up'] else 'down'}" \
            if reply.get("changed") else None
    if cmd == "port.set":
        return (f"port {reply['port']} mtu {reply['old']} -> {reply['mtu']}"
                if reply.get("changed") else None)
    return None


def ring_levels(mem: Any) -> dict[str, list[int]]:
    """[descriptors held, size] of every ring but the return rings."""
    return {name: [r.count(), r.size] for name, r in mem.rings.items()
            if not name.startswith("ret.")}


def pool_level(mem: Any) -> dict[str, int]:
    """The buffer pool: its size and the free buffers its owners hold."""
    from engine.shm.memory import ST_FREE

    g = mem.geometry
    return {"buffers": int(g.nbufs), "free": int(mem.state[:, ST_FREE].sum())}
