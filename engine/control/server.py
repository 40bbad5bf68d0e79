"""The control socket: msgpack requests over a Unix stream socket, mode 0600.

Served from a thread of its own (`ControlServer.start`), so that no work of the
control process's main thread (feeding a replay, writing its outputs, starting the
agents) delays an answer. What only reads shared memory (stats, ping, trace and
capture) is answered in that thread. What writes the FIB, the next-hop table or the
port state is not: the FIB and the next-hop table have exactly one writer, the main
thread (`engine.shm.fib` assumes it), so such a request (`on_main` says which) is
queued for it and answered once the main thread has run it (`serve_main`, called
from its loop between two I/O passes); meanwhile the connection reads nothing more.
Without `start`, `poll` serves every request in the calling thread.

Where it listens: `[engine] control_socket` in the config, overridden by
`fwd run --socket PATH`; otherwise `DEFAULT_SOCKET` (/run/fwd/fwd.sock), which is
skipped with a warning when it cannot be used (no permission to create /run/fwd,
or another engine already listening there). The socket is created with mode 0600
(under umask 0177; a parent directory it creates gets 0700), only peers with the
engine's uid or root are served (SO_PEERCRED), and the file is removed when the
engine exits. The client is engine/cli/client.py.

The wire format is engine/control/wire.py, the commands engine/control/commands.py
(the server calls whatever handler it is given). A request longer than `MAX_REQUEST`
gets an error reply, then the connection is closed (the stream cannot be resynced).
Malformed msgpack, a request that is not a map, an unknown command, an unknown or
missing argument or one of the wrong type all get an error reply and the connection
stays usable.

Holding the socket: a client must not keep others out by connecting and saying
nothing, or by sending a byte now and then.
- A request has a deadline, not an idle timer: the first one must be complete within
  `REQUEST_TIMEOUT_S` of the accept, each later one within `REQUEST_TIMEOUT_S` of its
  first byte. Time the server spends serving other requests (a large route.load) is
  not counted against it. Between requests a connection may stay `IDLE_TIMEOUT_S`.
- One process may hold `MAX_PER_PEER` connections; further ones are refused. The
  peer is the process SO_PEERCRED names (its pid): the uid would not do, as only the
  engine's own uid and root get in at all, so the uid of a runaway client is that of
  every legitimate one. A cap per process stops one stuck or leaking client; many
  processes are what eviction is for.
- When `MAX_CONNECTIONS` are open, a new client is not refused: the connection that
  has waited longest without completing a request is closed for it (then, if every
  one has completed a request, the one idle longest, then the one whose reply has
  been pending longest).
Whoever is closed for these reasons gets an error reply saying why, if it fits in the
socket's buffer; `timed_out`, `evicted` and `refused` count them.
"""

from __future__ import annotations

import contextlib
import errno
import os
import queue
import selectors
import socket
import stat
import struct
import sys
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgpack

from engine.control.wire import (
    HEADER,
    MAX_REQUEST,
    RECV_CHUNK,
    RequestError,
    decode,
    encode,
    error,
)

MAX_CONNECTIONS = 64
MAX_PER_PEER = 8  # connections one process (SO_PEERCRED pid) may hold at once
REQUEST_TIMEOUT_S = 5.0  # accept (or a request's first byte) to the whole request
IDLE_TIMEOUT_S = 60.0  # between requests, on a connection that has completed one
THREAD_POLL_S = 0.5  # longest select of the server thread (its sweep of deadlines)


class ControlSetupError(Exception):
    """The server could not listen on its path."""


@dataclass
class _Conn:
    sock: socket.socket
    pid: int | None  # the peer process (None: SO_PEERCRED is not available)
    since: float  # when the current request's clock started: accept, or its first byte
    busy_since: float  # the server's `busy` then: serving others is not charged to it
    rbuf: bytearray = field(default_factory=bytearray)
    wbuf: bytearray = field(default_factory=bytearray)
    closing: bool = False  # close once wbuf is sent (after an oversized request)
    on_main: bool = False  # a request waits for the main thread: nothing more is read
    done: int = 0  # requests completed
    last: float = field(default_factory=time.monotonic)  # last byte either way

    def waiting(self) -> bool:
        """A request is under way (or the first one is yet to come): the deadline runs."""
        return not self.wbuf and not self.on_main and (not self.done or bool(self.rbuf))


class ControlServer:
    """Non-blocking msgpack server on a Unix socket; `poll` does one round of I/O."""

    def __init__(self, path: str | os.PathLike[str],
                 handler: Callable[[object], dict[str, Any]],
                 max_connections: int = MAX_CONNECTIONS, max_per_peer: int = MAX_PER_PEER,
                 request_timeout: float = REQUEST_TIMEOUT_S,
                 on_main: Callable[[object], bool] | None = None) -> None:
        self.path = os.path.abspath(os.fspath(path))
        self.handler = handler
        # which decoded requests the main thread must run, once the server has a thread
        self.on_main = on_main
        self.max_connections = max_connections
        self.max_per_peer = max_per_peer
        self.request_timeout = request_timeout
        self.served = 0
        self.timed_out = 0  # closed for a request not complete in time
        self.evicted = 0  # closed to make room for a new client
        self.refused = 0  # new connections refused: their process holds too many
        self.busy = 0.0  # seconds spent in the handler, over the server's life
        self._conns: dict[int, _Conn] = {}
        self._sel = selectors.DefaultSelector()
        self._sock = _listen(self.path)
        st = os.stat(self.path)
        self._ident = (st.st_dev, st.st_ino)  # so that close() unlinks only our socket
        self._sel.register(self._sock, selectors.EVENT_READ, None)
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._calls: queue.Queue[tuple[_Conn, object]] = queue.Queue()  # for the main thread
        # called after a request is queued for the main thread: wakes it if it blocks
        # elsewhere than in serve_main (the supervisor's doorbell, workers/doorbell.py)
        self.notify: Callable[[], None] | None = None
        self._replies: queue.Queue[tuple[_Conn, dict[str, Any]]] = queue.Queue()  # its answers
        # the main thread wakes the server thread's select when it has answered
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._sel.register(self._wake_r, selectors.EVENT_READ, "wake")

    def fileno(self) -> int:
        return self._sock.fileno()

    def start(self) -> None:
        """Serve from a thread of our own from now on: `poll` must not be called
        again; requests that `on_main` names wait for `serve_main`."""
        self._thread = threading.Thread(target=self._serve_forever, name="fwd-control",
                                        daemon=True)
        self._thread.start()

    def _serve_forever(self) -> None:
        while not self._stopping:
            try:
                self.poll(THREAD_POLL_S)
            except Exception:  # a bug must not leave the socket unserved: say it, go on
                traceback.print_exc(file=sys.stderr)
                time.sleep(0.01)

    def has_calls(self) -> bool:
        """Whether a request waits for the main thread (`serve_main`)."""
        return not self._calls.empty()

    def serve_main(self, timeout: float = 0.0) -> int:
        """Run the requests queued for the main thread (call it from the main thread),
        waiting up to `timeout` seconds for the first; returns how many ran."""
        ran = 0
        try:
            conn, msg = self._calls.get(timeout=timeout) if timeout > 0 else \
                self._calls.get_nowait()
            while True:
                self._replies.put((conn, self._handle(msg)))
                ran += 1
                conn, msg = self._calls.get_nowait()
        except queue.Empty:
            pass
        if ran:
            with contextlib.suppress(OSError):  # full: a wake-up is pending anyway
                self._wake_w.send(b"\0")
        return ran

    def poll(self, timeout: float = 0.0) -> int:
        """Wait up to `timeout` seconds for socket activity and handle what is ready;
        returns the number of requests served."""
        before = self.served
        for key, events in self._sel.select(timeout):
            if key.data is None:
                self._accept()
                continue
            if key.data == "wake":
                self._answered()
                continue
            conn: _Conn = key.data
            if events & selectors.EVENT_READ:
                self._read(conn)
            if events & selectors.EVENT_WRITE and conn.sock.fileno() >= 0:
                self._write(conn)
        if self._conns:
            now = time.monotonic()
            for conn in list(self._conns.values()):
                if conn.waiting() and self._age(conn, now) > self.request_timeout:
                    self.timed_out += 1
                    self._drop(conn, f"no complete request within {self.request_timeout:g} s; "
                                     "closing the connection")
                elif now - conn.last > IDLE_TIMEOUT_S and not conn.on_main:
                    self._close(conn)
        return self.served - before

    def close(self) -> None:
        """Stop the thread (requests still queued for the main thread are not run),
        close every connection and the listener; remove the socket file if it is
        still the one we created."""
        if self._thread is not None:
            self._stopping = True
            with contextlib.suppress(OSError):
                self._wake_w.send(b"\0")
            self._thread.join()
        for conn in list(self._conns.values()):
            self._close(conn)
        with contextlib.suppress(KeyError, ValueError):
            self._sel.unregister(self._sock)
        self._sock.close()
        self._sel.close()
        self._wake_r.close()
        self._wake_w.close()
        try:
            st = os.stat(self.path)
            if (st.st_dev, st.st_ino) == self._ident:
                os.unlink(self.path)
        except FileNotFoundError:
            pass

    def __enter__(self) -> ControlServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ internals

    def _accept(self) -> None:
        while True:
            try:
                s, _ = self._sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as err:  # EMFILE and friends: try again next poll
                print(f"fwd: control socket accept: {err}", file=sys.stderr)
                return
            s.setblocking(False)
            pid, uid = _peer_cred(s)
            if uid is not None and uid not in (os.geteuid(), 0):
                # mode 0600 already keeps other users out; this is the second lock
                s.close()
                continue
            if pid is not None and sum(c.pid == pid for c in self._conns.values()) \
                    >= self.max_per_peer:
                self.refused += 1
                _say(s, f"too many connections from process {pid} "
                        f"(at most {self.max_per_peer} at once)")
                s.close()
                continue
            if len(self._conns) >= self.max_connections:
                self.evicted += 1
                self._drop(min(self._conns.values(), key=self._eviction_order),
                           f"the control socket is full ({self.max_connections} connections); "
                           "this one is closed for a newer client")
            now = time.monotonic()
            conn = _Conn(s, pid, since=now, busy_since=self.busy, last=now)
            self._conns[s.fileno()] = conn
            self._sel.register(s, selectors.EVENT_READ, conn)

    def _age(self, conn: _Conn, now: float) -> float:
        """Seconds the current request has been under way, less the time the server
        spent serving others meanwhile."""
        return now - conn.since - (self.busy - conn.busy_since)

    @staticmethod
    def _eviction_order(conn: _Conn) -> tuple[int, float]:
        # first a connection yet to complete its request (the oldest first), then one
        # idle between requests, then one the server still owes a reply
        if conn.waiting():
            return (0, conn.since)
        return (2 if conn.wbuf or conn.on_main else 1, conn.last)

    def _drop(self, conn: _Conn, why: str) -> None:
        """Close `conn`, telling it why if that fits in its socket buffer now."""
        _say(conn.sock, why)
        self._close(conn)

    def _read(self, conn: _Conn) -> None:
        try:
            chunk = conn.sock.recv(RECV_CHUNK)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._close(conn)
            return
        if not chunk:  # the client hung up; nothing to answer
            self._close(conn)
            return
        conn.last = time.monotonic()
        if conn.done and not conn.rbuf:  # a later request's first byte: its clock starts
            conn.since, conn.busy_since = conn.last, self.busy
        conn.rbuf += chunk
        self._parse(conn)

    def _parse(self, conn: _Conn) -> None:
        """Serve the complete requests `conn.rbuf` holds, until one goes to the main
        thread; then send what is ready."""
        while len(conn.rbuf) >= HEADER.size and not conn.closing and not conn.on_main:
            (n,) = HEADER.unpack_from(conn.rbuf)
            if n > MAX_REQUEST:
                conn.wbuf += encode(error(
                    f"request of {n} bytes exceeds the limit of {MAX_REQUEST} bytes; "
                    "closing the connection"))
                conn.rbuf.clear()
                conn.closing = True
                self.served += 1
                break
            if len(conn.rbuf) < HEADER.size + n:
                break
            body = bytes(conn.rbuf[HEADER.size : HEADER.size + n])
            del conn.rbuf[: HEADER.size + n]
            t = time.monotonic()
            msg = self._decode(body)
            if self._thread is not None and self.on_main is not None \
                    and not isinstance(msg, _Reply) and self.on_main(msg):
                # the main thread runs it; this connection reads nothing until it has
                conn.on_main = True
                self._calls.put((conn, msg))
                if self.notify is not None:  # the main thread may be blocked idle
                    self.notify()
                break
            reply = msg.reply if isinstance(msg, _Reply) else self._handle(msg)
            conn.wbuf += encode(reply)
            self.busy += time.monotonic() - t
            self._completed(conn)
        if conn.wbuf:
            self._write(conn)
        else:
            self._watch(conn)

    def _completed(self, conn: _Conn) -> None:
        self.served += 1
        conn.done += 1
        # the next request (pipelined, if rbuf holds its start) runs from here
        conn.since, conn.busy_since = time.monotonic(), self.busy

    def _answered(self) -> None:
        """Send the replies the main thread has made, and go on reading their
        connections."""
        with contextlib.suppress(OSError):
            while self._wake_r.recv(4096):
                pass
        while True:
            try:
                conn, reply = self._replies.get_nowait()
            except queue.Empty:
                return
            conn.on_main = False
            if self._conns.get(conn.sock.fileno()) is not conn:
                continue  # closed meanwhile
            conn.wbuf += encode(reply)
            self._completed(conn)
            self._parse(conn)  # then pipelined requests

    def _decode(self, body: bytes) -> object:
        """The request, or a _Reply carrying the error of one that cannot be decoded."""
        try:
            return decode(body)
        except RequestError as err:
            return _Reply(error(str(err)))
        except msgpack.ExtraData:
            return _Reply(error("malformed msgpack: extra bytes after the request"))
        except msgpack.StackError:
            return _Reply(error("malformed msgpack: nested too deeply"))
        except msgpack.FormatError:
            return _Reply(error("malformed msgpack: not a msgpack object"))
        except Exception as err:  # ValueError for truncated input, bad map keys, ...
            return _Reply(error(f"malformed msgpack: {err or type(err).__name__}"))

    def _handle(self, msg: object) -> dict[str, Any]:
        try:
            reply = self.handler(msg)
            encode(reply)  # a reply that cannot be encoded is a bug; answer anyway
            return reply
        except Exception as err:
            traceback.print_exc(file=sys.stderr)
            return error(f"internal error: {type(err).__name__}: {err}")

    def _write(self, conn: _Conn) -> None:
        try:
            while conn.wbuf:
                sent = conn.sock.send(conn.wbuf)
                del conn.wbuf[:sent]
        except (BlockingIOError, InterruptedError):
            pass
        except OSError:
            self._close(conn)
            return
        conn.last = time.monotonic()
        if not conn.wbuf and conn.closing:
            self._close(conn)
            return
        self._watch(conn)

    def _watch(self, conn: _Conn) -> None:
        """Select what `conn` waits for. Read only when nothing is waiting to be sent:
        a client that pipelines requests without reading replies cannot make us buffer
        without bound; nor while a request waits for the main thread."""
        want = selectors.EVENT_WRITE if conn.wbuf else 0 if conn.on_main \
            else selectors.EVENT_READ
        try:
            key: selectors.SelectorKey | None = self._sel.get_key(conn.sock)
        except KeyError:
            key = None
        if key is not None and not want:
            self._sel.unregister(conn.sock)
        elif key is None and want:
            self._sel.register(conn.sock, want, conn)
        elif key is not None and key.events != want:
            self._sel.modify(conn.sock, want, conn)

    def _close(self, conn: _Conn) -> None:
        fd = conn.sock.fileno()
        if fd >= 0:
            with contextlib.suppress(KeyError, ValueError):
                self._sel.unregister(conn.sock)
            self._conns.pop(fd, None)
        conn.sock.close()


@dataclass
class _Reply:
    """The answer to a request that could not be decoded (no handler runs)."""

    reply: dict[str, Any]


def _peer_cred(s: socket.socket) -> tuple[int | None, int | None]:
    """(pid, uid) of the peer process, as of its connect(); Nones when unknown."""
    try:
        creds = s.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    except (AttributeError, OSError):  # not Linux: rely on the file mode
        return None, None
    pid, uid, _gid = struct.unpack("3i", creds)
    return pid, uid


def _say(s: socket.socket, why: str) -> None:
    """An error reply on a non-blocking socket about to be closed, if it fits now."""
    with contextlib.suppress(OSError):
        s.send(encode(error(why)))


def _listen(path: str) -> socket.socket:
    """A listening, non-blocking Unix socket at `path`, mode 0600."""
    parent = Path(path).parent
    if not parent.is_dir():
        try:
            parent.mkdir(mode=0o700, parents=True)
            os.chmod(parent, 0o700)  # mkdir's mode is filtered by the umask
        except FileExistsError:
            pass
        except OSError as err:
            raise ControlSetupError(f"cannot create {parent}: {err.strerror or err}") from None
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        _bind(sock, path)
        os.chmod(path, 0o600)
        sock.listen(socket.SOMAXCONN)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def _bind(sock: socket.socket, path: str) -> None:
    # the socket file takes its mode from the umask at bind() (fchmod on a socket fd
    # does not reach the file): 0177 makes it 0600 from its first instant. The umask
    # is process-wide; the control process binds before it starts any thread.
    old = os.umask(0o177)
    try:
        try:
            sock.bind(path)
            return
        except OSError as err:
            if err.errno != errno.EADDRINUSE:
                raise ControlSetupError(f"cannot listen on {path}: {err.strerror or err}") \
                    from None
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            st = None
        if st is not None:
            if not stat.S_ISSOCK(st.st_mode):
                raise ControlSetupError(f"cannot listen on {path}: it exists and is not a socket")
            if _answers(path):
                raise ControlSetupError(f"another engine is listening on {path}")
            os.unlink(path)  # a socket left by an engine that died: take its place
        try:
            sock.bind(path)
        except OSError as err:
            raise ControlSetupError(f"cannot listen on {path}: {err.strerror or err}") from None
    finally:
        os.umask(old)


def _answers(path: str) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(1.0)
        try:
            s.connect(path)
        except (ConnectionRefusedError, FileNotFoundError):
            return False
        except OSError:
            return True  # someone is there (e.g. backlog full, or not ours): leave it
        return True
