"""`fwd route load FILE` on the client's side: read the file (the engine never opens a
path a request names) and cut its text into `route.load` parts that each fit in one
request (engine/control/commands.py describes the staged load the parts build); and
`fwd route save FILE`: routes as a TOML fragment of [[route]]s the config includes.

Only an ordinary file is read: a FIFO would block, a device (/dev/zero) never ends,
and a /proc or /sys file is the kernel's, not a route table. The file is opened
non-blocking and checked on the descriptor (what was checked is what is read), and
at most its size in bytes (itself at most `LOAD_MAX`) is read.
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
import tempfile
from typing import Any

from engine.control.wire import LOAD_MAX, MAX_REQUEST

PART_MAX = MAX_REQUEST - 1024  # bytes of text in one part: room for the rest of the map
# file systems whose files are the kernel's views, whatever their mode says
PSEUDO_FS = frozenset({"proc", "sysfs", "debugfs", "tracefs", "securityfs", "configfs",
                       "cgroup", "cgroup2", "bpf", "efivarfs", "fusectl", "pstore"})

_KINDS = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"),
          (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
          (stat.S_ISSOCK, "a socket"))


class RouteFileError(Exception):
    """The file cannot be loaded; the message (one line) names it and says why."""


def read_route_file(path: str, limit: int = LOAD_MAX) -> str:
    """The text of the route file at `path`: an ordinary UTF-8 file of at most `limit`
    bytes; RouteFileError otherwise. Never blocks on a FIFO or a device."""
    try:
        # stat before open: opening some devices does something (a tape rewinds)
        _check(path, os.stat(path), limit)
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError as err:
        raise RouteFileError(f"{path}: {err.strerror or err}") from None
    try:
        st = os.fstat(fd)  # the path may have been swapped since the stat
        _check(path, st, limit)
        data = _read_at_most(fd, st.st_size + 1)
    except OSError as err:
        raise RouteFileError(f"{path}: {err.strerror or err}") from None
    finally:
        os.close(fd)
    if len(data) > st.st_size:
        # /proc files say size 0 and still have content; or it grows while we read
        raise RouteFileError(f"{path}: holds more than its size ({st.st_size} bytes) says: "
                             "not an ordinary file, or it is being written")
    try:
        return data.decode()
    except UnicodeDecodeError as err:
        raise RouteFileError(f"{path}: not UTF-8 text (byte {err.start})") from None


def _check(path: str, st: os.stat_result, limit: int) -> None:
    if not stat.S_ISREG(st.st_mode):
        kind = next((name for test, name in _KINDS if test(st.st_mode)), "not a file")
        raise RouteFileError(f"{path}: not a regular file ({kind})")
    fs = _fs_type(st.st_dev)
    if fs in PSEUDO_FS:
        raise RouteFileError(f"{path}: a file of the kernel's {fs} file system, "
                             "not a route table")
    if st.st_size > limit:
        raise RouteFileError(f"{path}: {st.st_size} bytes, more than the {limit} "
                             "a route load may carry")


def _fs_type(dev: int) -> str | None:
    """The type of the file system mounted from device `dev` (from
    /proc/self/mountinfo), or None when it cannot be told."""
    want = f"{os.major(dev)}:{os.minor(dev)}"
    with contextlib.suppress(OSError), open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            if len(fields) > 2 and fields[2] == want and " - " in line:
                return line.split(" - ", 1)[1].split()[0]
    return None


def _read_at_most(fd: int, n: int) -> bytes:
    chunks: list[bytes] = []
    got = 0
    while got < n:
        chunk = os.read(fd, min(n - got, 1 << 20))
        if not chunk:
            break
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


def split_parts(path: str, text: str, part_max: int = PART_MAX) -> list[str]:
    """`text` cut at line ends into parts of at most `part_max` UTF-8 bytes, in order;
    the engine numbers lines on across parts, so the cuts are `str.splitlines`' own."""
    if len(text) * 4 <= part_max or len(text.encode()) <= part_max:
        return [text]
    parts: list[str] = []
    part: list[str] = []
    size = 0
    for n, line in enumerate(text.splitlines(keepends=True), 1):
        b = len(line.encode())
        if b > part_max:
            raise RouteFileError(f"{path}: line {n} is longer than {part_max} bytes")
        if size + b > part_max:
            parts.append("".join(part))
            part, size = [], 0
        part.append(line)
        size += b
    parts.append("".join(part))
    return parts


def routes_toml(routes: list[dict[str, Any]], origin: str) -> str:
    """`route.show` rows as [[route]] tables: a fragment that a config's `include`
    reads back into the same routes (each with its resolved port, its metric when
    not 0, an ECMP route's members as `nexthops`)."""
    out = [f"# fwd route save --origin {origin}: {len(routes)} route"
           f"{'s' if len(routes) != 1 else ''}; a config reads them with",
           '# include = ["<this file>"] (relative to the config\'s folder)']
    for r in routes:
        out += ["", "[[route]]", f"prefix = {_toml_str(r['prefix'])}"]
        if r["type"] != "unicast":
            out.append(f"type = {_toml_str(r['type'])}")
        if r.get("nexthops"):
            hops = ", ".join("{via = " + _toml_str(h["via"])
                             + (f", port = {_toml_str(h['port'])}" if h.get("port") else "")
                             + "}" for h in r["nexthops"])
            out.append(f"nexthops = [{hops}]")
        else:
            if r.get("via"):
                out.append(f"via = {_toml_str(r['via'])}")
            if r.get("port") and r["type"] == "unicast":
                out.append(f"port = {_toml_str(r['port'])}")
        if r.get("metric"):
            out.append(f"metric = {int(r['metric'])}")
    return "\n".join(out) + "\n"


def _toml_str(value: str) -> str:
    # a JSON string of printable ASCII is a TOML basic string; route fields are
    # prefixes, addresses and port names: nothing else ever reaches here
    return json.dumps(str(value), ensure_ascii=True)


def write_text(path: str, text: str) -> None:
    """Write `text` to `path` whole or not at all: a temporary file beside it, then a
    rename (a config that includes it never reads half a file). RouteFileError names
    the path and the problem."""
    folder = os.path.dirname(os.path.abspath(path))
    try:
        if os.path.exists(path) and not stat.S_ISREG(os.stat(path).st_mode):
            raise RouteFileError(f"{path}: not a regular file; not overwritten")
        fd, tmp = tempfile.mkstemp(prefix=".fwd-routes-", dir=folder)
        try:
            with os.fdopen(fd, "w") as f:
                f.write(text)
            os.chmod(tmp, 0o644)
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
    except OSError as err:
        raise RouteFileError(f"{path}: {err.strerror or err}") from None
