"""Entering a network namespace by name, as `ip netns exec` does (`setns(2)`).

`ip netns add NAME` bind-mounts the namespace at /run/netns/NAME. A process that
enters it before starting its workers gives them that namespace too (children inherit
it), while paths (the control socket, pcap files) stay those of the filesystem.
Python 3.11 has no `os.setns`, so libc's is called through ctypes.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
from collections.abc import Iterator
from contextlib import contextmanager

NETNS_RUN_DIR = "/run/netns"
CLONE_NEWNET = 0x40000000


class NetnsError(OSError):
    """The namespace does not exist or cannot be entered."""


def _setns(fd: int, what: str) -> None:
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    if libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        hint = " (entering a network namespace needs root: CAP_SYS_ADMIN)" if err == 1 else ""
        raise NetnsError(err, f"cannot enter network namespace {what}: "
                              f"{os.strerror(err)}{hint}")


@contextmanager
def netns(name: str | None) -> Iterator[None]:
    """Run the body inside network namespace `name` (None: where we are), then return
    to the namespace we came from."""
    if name is None:
        yield
        return
    path = os.path.join(NETNS_RUN_DIR, name)
    try:
        target = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise NetnsError(2, f"no network namespace {name!r} ({path} does not exist; "
                            "create it with `ip netns add` or `fwd lab up`)") from None
    except PermissionError:
        raise NetnsError(13, f"cannot open {path}: permission denied") from None
    home = os.open("/proc/self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        _setns(target, repr(name))
        try:
            yield
        finally:
            _setns(home, "of this process (going back)")
    finally:
        os.close(target)
        os.close(home)
