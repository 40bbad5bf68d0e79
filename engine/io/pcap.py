"""Classic pcap files (libpcap savefile format), read and written with numpy.

Format: draft-ietf-opsawg-pcap (the libpcap savefile format). A 24-byte global header
(magic, version 2.4, thiszone, sigfigs, snaplen, linktype) then records, each a 16-byte
header (ts_sec, ts_frac, caplen, origlen) and caplen bytes. The magic's byte order is
the file's byte order; 0xa1b2c3d4 means microsecond fractions, 0xa1b23c4d nanoseconds.

Reading is one `read`, a walk over the record headers, and numpy for everything else.
The walk is inherently serial (a record's caplen gives the next record's offset); it
takes a vectorised shortcut when every record has the same length (benchmark captures
of fixed-size frames) and otherwise a tight `struct` loop, the fastest of the serial
approaches tried (see `_walk_serial`).
"""

from __future__ import annotations

import errno
import os
import struct
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from os import PathLike
from pathlib import Path
from typing import BinaryIO, overload

import numpy as np

LINKTYPE_ETHERNET = 1
WRITE_SNAPLEN = 65535
# libpcap's MAXIMUM_SNAPLEN: larger caplens mean a damaged file (sf-pcap.c)
MAX_SNAPLEN = 262144

MAGIC_USEC = 0xA1B2C3D4
MAGIC_NSEC = 0xA1B23C4D
MAGIC_MODIFIED = 0xA1B2CD34  # Alexey Kuznetzov's patched libpcap, 24-byte record headers
PCAPNG_MAGIC = b"\x0a\x0d\x0d\x0a"  # pcapng Section Header Block type
GLOBAL_HEADER = 24
RECORD_HEADER = 16

# draft-ietf-opsawg-pcaplinktype: common captures that are not Ethernet
_LINKTYPE_NAMES = {
    0: "NULL (BSD loopback)",
    101: "RAW (bare IP)",
    105: "IEEE802_11",
    113: "LINUX_SLL (Linux cooked capture)",
    127: "IEEE802_11_RADIOTAP",
    228: "IPV4",
    276: "LINUX_SLL2 (Linux cooked capture v2)",
}
# draft-ietf-opsawg-pcap §4: the linktype field's upper bits say whether frames carry an FCS
_LINKTYPE_MASK = 0x0000FFFF
_FCS_PRESENT = 0x04000000

PathArg = str | PathLike[str]


class PcapError(ValueError):
    """A capture that cannot be read or written; the message names the file.

    Record numbers in messages count from 1, as tcpdump, Wireshark and editcap do.
    """


@dataclass(eq=False)
class PcapFrames:
    """The frames of a capture: `data[offsets[i] : offsets[i] + lengths[i]]` is frame i."""

    data: np.ndarray  # uint8, every frame's captured bytes back to back
    offsets: np.ndarray  # int64, start of each frame in `data`
    lengths: np.ndarray  # uint32, captured length of each frame
    ts_ns: np.ndarray  # int64, capture time in nanoseconds since the epoch
    linktype: int = LINKTYPE_ETHERNET
    snaplen: int = WRITE_SNAPLEN

    def __len__(self) -> int:
        return len(self.offsets)

    def frame(self, i: int) -> bytes:
        start = int(self.offsets[i])
        return self.data[start : start + int(self.lengths[i])].tobytes()

    def __iter__(self) -> Iterator[bytes]:
        for i in range(len(self)):
            yield self.frame(i)

    def to_list(self) -> list[bytes]:
        return list(self)


def _u32_at(a: np.ndarray, pos: np.ndarray, big_endian: bool) -> np.ndarray:
    """The 32-bit words at byte positions `pos` (unaligned), as int64."""
    b = a[pos[:, None] + np.arange(4)].astype(np.int64)
    if big_endian:
        b = b[:, ::-1]
    return b[:, 0] | (b[:, 1] << 8) | (b[:, 2] << 16) | (b[:, 3] << 24)


def _walk_uniform(a: np.ndarray, big_endian: bool) -> np.ndarray | None:
    """Record offsets if every record has the first record's caplen, else None.

    Exact, not a heuristic: if the record at offset 24 + k*s holds caplen s - 16 for
    every k and the file ends on a record boundary, the serial walk visits exactly
    those offsets (induction on k).
    """
    size = len(a)
    if size < GLOBAL_HEADER + RECORD_HEADER:
        return None
    first = int(_u32_at(a, np.array([GLOBAL_HEADER + 8]), big_endian)[0])
    stride = RECORD_HEADER + first
    if (size - GLOBAL_HEADER) % stride:
        return None
    offsets = GLOBAL_HEADER + stride * np.arange((size - GLOBAL_HEADER) // stride,
                                                 dtype=np.int64)
    # a cheap look at a prefix first, so mixed-size captures pay almost nothing
    if not (_u32_at(a, offsets[:64] + 8, big_endian) == first).all():
        return None
    if not (_u32_at(a, offsets + 8, big_endian) == first).all():
        return None
    return offsets


def _walk_serial(buf: bytes, big_endian: bool) -> tuple[np.ndarray, int]:
    """Offsets of the records whose header is complete, and where the walk stopped.

    One C call (`unpack_from`) per record: faster than numpy per step, pointer jumping
    or speculating on runs of equal lengths on mixed sizes (perf/README.md);
    `_walk_uniform` covers the case where numpy wins.
    """
    unpack = struct.Struct(">I" if big_endian else "<I").unpack_from
    offsets: list[int] = []
    append = offsets.append
    pos = GLOBAL_HEADER
    last = len(buf) - RECORD_HEADER
    while pos <= last:
        append(pos)
        pos += RECORD_HEADER + unpack(buf, pos + 8)[0]
    return np.array(offsets, dtype=np.int64), pos


def read_pcap(path: PathArg, *, compact: bool = True) -> PcapFrames:
    """Read a classic pcap capture of Ethernet frames (either byte order, µs or ns).

    With `compact` (the default) `data` holds only the frames, back to back. Without it
    `data` is the file's bytes as read (read-only) and `offsets` skip the record
    headers: no copy, for callers that copy the frames elsewhere anyway.
    """
    name = str(path)
    try:
        buf = Path(path).read_bytes()
    except FileNotFoundError:
        raise PcapError(f"{name}: no such file") from None
    except OSError as e:
        raise PcapError(f"{name}: cannot read: {e.strerror or e}") from None

    size = len(buf)
    if size == 0:
        raise PcapError(f"{name}: file is empty, not a pcap capture")
    if buf[:4] == PCAPNG_MAGIC:
        raise PcapError(f"{name}: pcapng format is not supported, "
                        "convert it with `editcap -F pcap`")
    if size < 4:
        raise PcapError(f"{name}: too short to be a pcap capture ({size} bytes)")
    (magic,) = struct.unpack_from("<I", buf)
    if magic in (MAGIC_USEC, MAGIC_NSEC, MAGIC_MODIFIED):
        big_endian = False
    else:
        (magic,) = struct.unpack_from(">I", buf)
        big_endian = True
    if magic == MAGIC_MODIFIED:
        raise PcapError(f"{name}: modified (Kuznetzov) pcap format is not supported, "
                        "convert it with `editcap -F pcap`")
    if magic not in (MAGIC_USEC, MAGIC_NSEC):
        raise PcapError(f"{name}: not a pcap capture (magic number {buf[:4].hex()})")
    if size < GLOBAL_HEADER:
        raise PcapError(f"{name}: the pcap global header is truncated "
                        f"({size} of {GLOBAL_HEADER} bytes)")
    order = ">" if big_endian else "<"
    major, minor, _zone, _sigfigs, snaplen, network = struct.unpack_from(
        order + "HHiIII", buf, 4)
    if major != 2:
        raise PcapError(f"{name}: unsupported pcap version {major}.{minor} (expected 2.x)")
    linktype = network & _LINKTYPE_MASK
    if linktype != LINKTYPE_ETHERNET:
        kind = _LINKTYPE_NAMES.get(linktype, "unknown")
        raise PcapError(f"{name}: linktype {linktype} ({kind}) is not Ethernet "
                        f"({LINKTYPE_ETHERNET}); only Ethernet captures are supported")
    if network & _FCS_PRESENT:
        raise PcapError(f"{name}: frames carry a trailing FCS, which is not supported")
    # as libpcap: a zero or oversized snaplen in the header means "the maximum"
    limit = snaplen if 0 < snaplen <= MAX_SNAPLEN else MAX_SNAPLEN

    a = np.frombuffer(buf, dtype=np.uint8)
    offsets = _walk_uniform(a, big_endian)
    uniform = offsets is not None
    if offsets is None:
        offsets, stop = _walk_serial(buf, big_endian)
    else:
        stop = size
    n = len(offsets)

    words = a[offsets[:, None] + np.arange(RECORD_HEADER)].view(order + "u4").reshape(n, 4)
    caplen = words[:, 2].astype(np.int64)
    over = np.flatnonzero(caplen > limit)
    if len(over):
        k = int(over[0])
        raise PcapError(f"{name}: record {k + 1} at byte {int(offsets[k])} has a captured "
                        f"length of {int(caplen[k])} bytes, more than the snapshot "
                        f"length {limit}; the file is damaged")
    if stop > size:
        k = n - 1
        have = size - int(offsets[k]) - RECORD_HEADER
        raise PcapError(f"{name}: record {k + 1} at byte {int(offsets[k])} is truncated: "
                        f"{have} of its {int(caplen[k])} captured bytes are present")
    if stop < size:
        raise PcapError(f"{name}: record {n + 1} at byte {stop} is truncated: "
                        f"{size - stop} of its {RECORD_HEADER} header bytes are present")

    scale = 1 if magic == MAGIC_NSEC else 1000
    ts_ns = words[:, 0].astype(np.int64) * 1_000_000_000 + words[:, 1].astype(np.int64) * scale
    lengths = caplen.astype(np.uint32)
    if not compact:
        return PcapFrames(data=a, offsets=offsets + RECORD_HEADER, lengths=lengths,
                          ts_ns=ts_ns, linktype=linktype, snaplen=snaplen)
    out_offsets = np.zeros(n, dtype=np.int64)
    np.cumsum(caplen[:-1], out=out_offsets[1:])
    if uniform and n:
        stride = RECORD_HEADER + int(caplen[0])
        data = a[GLOBAL_HEADER:].reshape(n, stride)[:, RECORD_HEADER:].ravel()
    else:
        data = _drop_headers(a, offsets, caplen, out_offsets)
    return PcapFrames(data=data, offsets=out_offsets, lengths=lengths, ts_ns=ts_ns,
                      linktype=linktype, snaplen=snaplen)


def _drop_headers(a: np.ndarray, offsets: np.ndarray, caplen: np.ndarray,
                  out_offsets: np.ndarray) -> np.ndarray:
    """The file's frame bytes back to back: a boolean-mask compaction, done in slices
    of ~1 MiB so the mask stays in cache and is allocated once."""
    n = len(offsets)
    out = np.empty(int(caplen.sum()), dtype=np.uint8)
    if n == 0:
        return out
    chunk = 1 << 20
    bounds = np.unique(np.append(
        np.searchsorted(offsets, np.arange(int(offsets[0]), len(a), chunk)), n))
    mask = np.empty(chunk + MAX_SNAPLEN + RECORD_HEADER, dtype=bool)
    header = np.arange(RECORD_HEADER)
    for i, j in zip(bounds[:-1].tolist(), bounds[1:].tolist(), strict=True):
        start = int(offsets[i])
        end = int(offsets[j]) if j < n else len(a)
        m = mask[: end - start]
        m[:] = True
        m[offsets[i:j, None] - start + header] = False
        dst = int(out_offsets[i])
        out[dst : dst + end - start - RECORD_HEADER * (j - i)] = a[start:end][m]
    return out


def _concat(data: np.ndarray, offsets: np.ndarray,
            lengths: np.ndarray) -> np.ndarray:
    """The frames back to back, without copying when they already are."""
    total = int(lengths.sum())
    starts = np.zeros(len(lengths), dtype=np.int64)
    np.cumsum(lengths[:-1], out=starts[1:])
    if np.array_equal(offsets, starts):
        return data[:total]
    return data[np.arange(total, dtype=np.int64) + np.repeat(offsets - starts, lengths)]


@overload
def write_pcap(path: PathArg, frames: Sequence[bytes] | PcapFrames,
               ts_ns: np.ndarray | Sequence[int] | None = None, *,
               nanosecond: bool = False) -> None: ...


@overload
def write_pcap(path: PathArg, data: np.ndarray, offsets: np.ndarray, lengths: np.ndarray,
               ts_ns: np.ndarray | Sequence[int] | None = None, *,
               nanosecond: bool = False) -> None: ...


def write_pcap(path: PathArg, frames: Sequence[bytes] | PcapFrames | np.ndarray, *args,
               ts_ns: np.ndarray | Sequence[int] | None = None,
               nanosecond: bool = False) -> None:
    """Write Ethernet frames as a little-endian classic pcap (snaplen 65535).

    Two forms:
      write_pcap(path, [b"...", ...] or PcapFrames, ts_ns=None)
      write_pcap(path, data, offsets, lengths, ts_ns=None)   # uint8 array + int arrays
    `ts_ns` are nanoseconds since the epoch (zeros when omitted); the file keeps
    microseconds unless `nanosecond` is true. Parent directories are created. An OS
    error (no room, no permission) is a PcapError naming the file.
    """
    name = str(path)
    if isinstance(frames, np.ndarray):
        if len(args) not in (2, 3):
            raise TypeError("write_pcap(path, data, offsets, lengths, ts_ns=None)")
        offsets, lengths = args[0], args[1]
        if len(args) == 3:
            ts_ns = args[2]
        data = np.ascontiguousarray(frames, dtype=np.uint8).reshape(-1)
        offsets = np.asarray(offsets, dtype=np.int64).reshape(-1)
        lengths = np.asarray(lengths, dtype=np.int64).reshape(-1)
        if len(offsets) != len(lengths):
            raise ValueError(f"{len(offsets)} offsets but {len(lengths)} lengths")
        if len(lengths) and (
            (lengths < 0).any() or (offsets < 0).any()
            or int((offsets + lengths).max()) > len(data)
        ):
            raise ValueError("frame offsets/lengths fall outside `data`")
    else:
        if len(args) > 1:
            raise TypeError("write_pcap(path, frames, ts_ns=None)")
        if args:
            ts_ns = args[0]
        if isinstance(frames, PcapFrames):
            data, offsets = frames.data, frames.offsets.astype(np.int64)
            lengths = frames.lengths.astype(np.int64)
        else:
            blobs = [bytes(f) for f in frames]
            lengths = np.fromiter((len(b) for b in blobs), dtype=np.int64, count=len(blobs))
            data = np.frombuffer(b"".join(blobs), dtype=np.uint8)
            offsets = np.zeros(len(blobs), dtype=np.int64)
            np.cumsum(lengths[:-1], out=offsets[1:])

    n = len(lengths)
    if ts_ns is None:
        ts = np.zeros(n, dtype=np.int64)
    else:
        ts = np.asarray(ts_ns, dtype=np.int64).reshape(-1)
        if len(ts) != n:
            raise ValueError(f"{n} frames but {len(ts)} timestamps")
    if n:
        big = np.flatnonzero(lengths > WRITE_SNAPLEN)
        if len(big):
            raise PcapError(f"{name}: frame {int(big[0])} is {int(lengths[big[0]])} bytes, "
                            f"more than the snapshot length {WRITE_SNAPLEN}")
        if (ts < 0).any() or int(ts.max()) // 1_000_000_000 > 0xFFFFFFFF:
            raise PcapError(f"{name}: timestamps must lie in [1970, 2106) for pcap")

    magic = MAGIC_NSEC if nanosecond else MAGIC_USEC
    target = Path(path)
    try:
        if _nearest_folder(target) != target.parent:
            target.parent.mkdir(parents=True, exist_ok=True)
        with open(target, "wb") as f:
            f.write(struct.pack("<IHHiIII", magic, 2, 4, 0, 0, WRITE_SNAPLEN,
                                LINKTYPE_ETHERNET))
            for chunk in _records(data, offsets, lengths, ts, nanosecond):
                f.write(chunk)
    except OSError as e:  # a full disk, /dev/full, a path under a regular file
        raise cannot_write(name, e) from None


RECORDS_CHUNK = 32 << 20  # bytes of records built at a time by the C helper


def _records(data: np.ndarray, offsets: np.ndarray, lengths: np.ndarray, ts: np.ndarray,
             nanosecond: bool) -> Iterator[memoryview]:
    """The records (16-byte header, then the frame) of the frames in the order of
    `offsets`, in pieces to write one after the other. By the drivers' C helper when it
    can be built: a memcpy a frame into one reused buffer of RECORDS_CHUNK bytes (a
    piece is written before the next is built). Else numpy, in one piece, whose index
    arrays take 16 bytes per byte written: seconds for millions of frames, which the
    stop of a run would wait for."""
    n = len(lengths)
    if n == 0:
        return
    from engine.io.afpacket import c_helper  # the drivers' helper, built on first use

    c = c_helper()
    if c is not None:
        ffi = c.ffi
        off = np.ascontiguousarray(offsets, dtype=np.int64)
        length = np.ascontiguousarray(lengths, dtype=np.int64)
        stamps = np.ascontiguousarray(ts, dtype=np.int64)
        ends = np.cumsum(length + RECORD_HEADER)
        buf = np.empty(min(int(ends[-1]), max(RECORDS_CHUNK, int(length.max()) + RECORD_HEADER)),
                       dtype=np.uint8)
        src, dst = ffi.from_buffer("uint8_t[]", data), ffi.from_buffer("uint8_t[]", buf)
        i, done = 0, 0
        while i < n:
            j = int(np.searchsorted(ends, done + len(buf), side="right"))
            c.lib.fwd_pcap_records(src, ffi.from_buffer("int64_t[]", off[i:j]),
                                   ffi.from_buffer("int64_t[]", length[i:j]),
                                   ffi.from_buffer("int64_t[]", stamps[i:j]), j - i,
                                   int(nanosecond), dst)
            yield memoryview(buf)[: int(ends[j - 1]) - done]
            i, done = j, int(ends[j - 1])
        return
    payload = _concat(data, offsets, lengths)
    out = np.empty(RECORD_HEADER * n + len(payload), dtype=np.uint8)
    words = np.empty((n, 4), dtype="<u4")
    words[:, 0] = ts // 1_000_000_000
    frac = ts % 1_000_000_000
    words[:, 1] = frac if nanosecond else frac // 1000
    words[:, 2] = lengths
    words[:, 3] = lengths
    starts = np.zeros(n, dtype=np.int64)
    np.cumsum(lengths[:-1], out=starts[1:])
    record = RECORD_HEADER * np.arange(n, dtype=np.int64) + starts
    header_bytes = record[:, None] + np.arange(RECORD_HEADER)
    out[header_bytes] = words.view(np.uint8).reshape(n, RECORD_HEADER)
    body = np.ones(len(out), dtype=bool)
    body[header_bytes] = False
    out[body] = payload
    yield memoryview(out)


def cannot_write(name: str, err: OSError) -> PcapError:
    """The error for an output that cannot be written: the file and the OS's reason."""
    return PcapError(f"{name}: cannot write: {err.strerror or err}")


def _nearest_folder(target: Path) -> Path:
    """The nearest existing folder above `target`. NotADirectoryError when that is
    something else: mkdir would only say "File exists"."""
    folder = target.parent
    while not folder.exists():
        folder = folder.parent
    if not folder.is_dir():
        raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), str(folder))
    return folder


def check_writable(path: PathArg) -> None:
    """PcapError unless `write_pcap(path, ...)` can open its file, proved without
    changing anything: an existing file is opened for writing (not truncated) and
    closed; for a new one a temporary file is made and removed in the nearest
    existing folder above it (write_pcap creates the folders that are missing).

    What only the write can tell (a full disk, /dev/full) stays a write error."""
    target = Path(path)
    try:
        if target.exists():
            # O_NONBLOCK: a FIFO nobody reads fails (ENXIO) instead of waiting for one
            os.close(os.open(target, os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC))
            return
        fd, probe = tempfile.mkstemp(prefix=".fwd-probe-", dir=_nearest_folder(target))
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise cannot_write(str(path), e) from None


class PcapWriter:
    """A classic pcap written as frames come (a live capture, a pipe to tcpdump): the
    global header at once, then records, each batch flushed, in microseconds."""

    def __init__(self, out: BinaryIO) -> None:
        self.out = out
        self.frames = 0
        out.write(struct.pack("<IHHiIII", MAGIC_USEC, 2, 4, 0, 0, WRITE_SNAPLEN,
                              LINKTYPE_ETHERNET))
        out.flush()

    def write(self, frames: Sequence[bytes], ts_ns: Sequence[int]) -> None:
        record = struct.Struct("<IIII")
        parts = []
        for frame, ts in zip(frames, ts_ns, strict=True):  # a capture's few frames a read
            if len(frame) > WRITE_SNAPLEN:
                raise PcapError(f"frame of {len(frame)} bytes, more than the snapshot "
                                f"length {WRITE_SNAPLEN}")
            parts.append(record.pack(ts // 1_000_000_000, ts % 1_000_000_000 // 1000,
                                     len(frame), len(frame)))
            parts.append(frame)
        self.out.write(b"".join(parts))
        self.out.flush()
        self.frames += len(frames)
