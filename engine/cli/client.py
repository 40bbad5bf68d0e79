"""The control socket's client: one request, one reply (engine/control/wire.py), for
the `fwd` commands that talk to a running engine.

Which socket: `--socket PATH`, else $FWD_SOCKET, else `DEFAULT_SOCKET`, else the one
engine socket beside it (`default_socket`).
"""

from __future__ import annotations

import os
import socket
import stat
import time
from typing import Any

from engine.control.wire import DEFAULT_SOCKET, HEADER, MAX_REQUEST, RECV_CHUNK, decode, encode

SOCKET_ENV = "FWD_SOCKET"
MAX_REPLY = 1 << 30  # what a client accepts (route.show of a full table is large)


class ControlError(Exception):
    """The client could not get a reply (the message says why, for a person)."""


class NoEngine(ControlError):
    """Nothing listens on the socket path."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        super().__init__(f"no engine listening on {os.fspath(path)}: is `fwd run` running?")
        self.path = os.fspath(path)


def default_socket(default: str = DEFAULT_SOCKET) -> str:
    """The socket a client talks to when no --socket is given: $FWD_SOCKET, else the
    default path, else the one engine socket in the default path's directory (an
    engine run with `control_socket = "/run/fwd/lab.sock"` is found without flags).
    Several there and none at the default path: a ControlError naming them."""
    if os.environ.get(SOCKET_ENV):
        return os.environ[SOCKET_ENV]
    if os.path.exists(default):
        return default
    folder = os.path.dirname(default)
    try:
        found = sorted(e.path for e in os.scandir(folder)
                       if e.name.endswith(".sock") and stat.S_ISSOCK(e.stat().st_mode))
    except OSError:  # no such directory, or not ours to read
        return default
    if len(found) > 1:
        raise ControlError(f"several engines in {folder}: {', '.join(found)}; pick one "
                           f"with --socket or ${SOCKET_ENV}")
    return found[0] if found else default


def request(socket_path: str | os.PathLike[str], msg: dict[str, Any],
            timeout: float = 5.0) -> dict[str, Any]:
    """Send one request and return the reply map (`ok` false is returned, not raised).

    Raises NoEngine when nothing listens at the path, ControlError when the socket
    refuses us, the engine does not answer within `timeout` seconds, or the reply is
    not a framed msgpack map."""
    path = os.fspath(socket_path)
    data = encode(msg)
    if len(data) - HEADER.size > MAX_REQUEST:
        raise ControlError(f"request is {len(data) - HEADER.size} bytes; the control socket "
                           f"takes at most {MAX_REQUEST}")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        try:
            _connect(s, path, timeout)
        except (FileNotFoundError, ConnectionRefusedError, NotADirectoryError):
            raise NoEngine(path) from None
        except PermissionError:
            raise ControlError(f"permission denied on {path}: the control socket is mode "
                               "0600, run this as the engine's user") from None
        except TimeoutError:
            raise ControlError(f"engine on {path} did not accept within {timeout} s") from None
        except OSError as err:
            raise ControlError(f"cannot connect to {path}: {err.strerror or err}") from None
        try:
            s.sendall(data)
            (n,) = HEADER.unpack(_recv_exact(s, HEADER.size, path))
            if n > MAX_REPLY:
                raise ControlError(f"reply of {n} bytes from {path} is too large")
            body = _recv_exact(s, n, path)
        except TimeoutError:
            raise ControlError(f"no reply from the engine on {path} within {timeout} s") \
                from None
        except (BrokenPipeError, ConnectionResetError):
            raise ControlError(f"the engine on {path} closed the connection") from None
    try:
        reply = decode(body)
    except Exception as err:
        raise ControlError(f"malformed reply from {path}: {err}") from None
    if not isinstance(reply, dict) or "ok" not in reply:
        raise ControlError(f"malformed reply from {path}: not a reply map")
    return reply


def _connect(s: socket.socket, path: str, timeout: float) -> None:
    # a Unix socket whose accept backlog is full fails at once with EAGAIN (it does
    # not wait like TCP): retry until the server's loop comes round to accept
    deadline = time.monotonic() + timeout
    while True:
        try:
            s.connect(path)
            return
        except BlockingIOError:
            if time.monotonic() >= deadline:
                raise TimeoutError from None
            time.sleep(0.005)


def _recv_exact(s: socket.socket, n: int, path: str) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = s.recv(min(n - len(buf), RECV_CHUNK))
        if not chunk:
            raise ControlError(f"the engine on {path} closed the connection")
        buf += chunk
    return bytes(buf)
