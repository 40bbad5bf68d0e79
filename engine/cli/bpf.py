"""tcpdump's filter expressions for `fwd capture`: compiled by the system's libpcap
(`pcap_compile` on a dead Ethernet handle, as tcpdump does for `-r`), matched with
`pcap_offline_filter` on each frame the engine hands the client. The engine's
capture ring stays unfiltered (it never slows forwarding); the client keeps what
matches, so `--count N` counts frames that matched."""

from __future__ import annotations

import ctypes
import ctypes.util
import functools

DLT_EN10MB = 1  # LINKTYPE_ETHERNET
SNAPLEN = 262144
PCAP_NETMASK_UNKNOWN = 0xFFFFFFFF  # no netmask: `ip broadcast` refused, as in tcpdump -r


class FilterError(ValueError):
    """An expression libpcap refuses (its message), or no libpcap to compile it."""


class _BpfProgram(ctypes.Structure):
    _fields_ = [("bf_len", ctypes.c_uint), ("bf_insns", ctypes.c_void_p)]


class _Timeval(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_usec", ctypes.c_long)]


class _PktHdr(ctypes.Structure):  # struct pcap_pkthdr
    _fields_ = [("ts", _Timeval), ("caplen", ctypes.c_uint32), ("len", ctypes.c_uint32)]


@functools.cache
def _libpcap() -> ctypes.CDLL:
    name = ctypes.util.find_library("pcap") or "libpcap.so.0.8"
    try:
        lib = ctypes.CDLL(name)
    except OSError:
        raise FilterError("a filter expression needs libpcap (Debian: libpcap0.8)") from None
    lib.pcap_open_dead.restype = ctypes.c_void_p
    lib.pcap_open_dead.argtypes = [ctypes.c_int, ctypes.c_int]
    lib.pcap_compile.argtypes = [ctypes.c_void_p, ctypes.POINTER(_BpfProgram), ctypes.c_char_p,
                                 ctypes.c_int, ctypes.c_uint32]
    lib.pcap_geterr.restype = ctypes.c_char_p
    lib.pcap_geterr.argtypes = [ctypes.c_void_p]
    lib.pcap_offline_filter.argtypes = [ctypes.POINTER(_BpfProgram), ctypes.POINTER(_PktHdr),
                                        ctypes.c_char_p]
    lib.pcap_freecode.argtypes = [ctypes.POINTER(_BpfProgram)]
    lib.pcap_close.argtypes = [ctypes.c_void_p]
    return lib


class Filter:
    """A compiled filter expression; `matches(frame)` as tcpdump would decide."""

    def __init__(self, expression: str) -> None:
        self.expression = expression
        lib = _libpcap()
        self._lib = lib
        self._handle = lib.pcap_open_dead(DLT_EN10MB, SNAPLEN)
        if not self._handle:
            raise FilterError("libpcap could not open a handle to compile the filter")
        self._program = _BpfProgram()
        if lib.pcap_compile(self._handle, ctypes.byref(self._program), expression.encode(),
                            1, PCAP_NETMASK_UNKNOWN) != 0:
            why = lib.pcap_geterr(self._handle).decode(errors="replace")
            lib.pcap_close(self._handle)
            self._handle = None
            raise FilterError(f"filter {expression!r}: {why}")
        self._hdr = _PktHdr()

    def matches(self, frame: bytes) -> bool:
        self._hdr.caplen = self._hdr.len = len(frame)
        return self._lib.pcap_offline_filter(ctypes.byref(self._program),
                                             ctypes.byref(self._hdr), frame) != 0

    def close(self) -> None:
        if self._handle:
            self._lib.pcap_freecode(ctypes.byref(self._program))
            self._lib.pcap_close(self._handle)
            self._handle = None

    def __del__(self) -> None:
        self.close()
