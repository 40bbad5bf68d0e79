"""The control socket's wire format, shared by the server (engine/control/server.py)
and the client (engine/cli/client.py).

Framing: every message, both ways, is a 4-byte big-endian length, then that many
bytes of msgpack. Requests are at most `MAX_REQUEST` bytes. Requests are maps
`{"cmd": NAME, ...arguments}` (engine/control/commands.py lists them); replies are
maps `{"ok": true, ...results}` or `{"ok": false, "error": MESSAGE}`. Messages are
decoded with `raw=False, strict_map_key=True` and extension types are refused:
decoding never evaluates anything.
"""

from __future__ import annotations

import struct
from typing import Any

import msgpack

DEFAULT_SOCKET = "/run/fwd/fwd.sock"
MAX_REQUEST = 1 << 20  # bytes of msgpack in one request
# characters of route text one route.load carries over all its parts (256 MiB: some
# 8M lines, far beyond a full Internet table); the client reads at most this many bytes
LOAD_MAX = 1 << 28
RECV_CHUNK = 1 << 18  # bytes asked of recv() at a time, on both ends
HEADER = struct.Struct(">I")


class RequestError(ValueError):
    """A request the server refuses; the message goes back in the error reply."""


def _refuse_ext(code: int, data: bytes) -> Any:
    raise RequestError(f"msgpack extension type {code} is not accepted")


def encode(msg: Any) -> bytes:
    """A framed message: length prefix, then msgpack."""
    body = msgpack.packb(msg, use_bin_type=True)
    return HEADER.pack(len(body)) + body


def decode(body: bytes) -> Any:
    """msgpack to plain Python objects: str for strings, no extension types, map
    keys only str/bytes; never evaluates anything."""
    return msgpack.unpackb(body, raw=False, strict_map_key=True, ext_hook=_refuse_ext,
                           use_list=True)


def error(message: str) -> dict[str, Any]:
    """An error reply."""
    return {"ok": False, "error": message}
