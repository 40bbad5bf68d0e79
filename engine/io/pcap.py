"""Classic pcap files (libpcap savefile format), read and written with numpy.

Format: draft-ietf-opsawg-pcap (the libpcap savefile format). A 24-byte global header
(magic, version 2.4, thiszone, sigfigs, snaplen, linktype) then records, each a 16-byte
header (ts_sec, ts_frac, caplen, origlen) and caplen bytes. The magic's byte order is
the file's byte order; 0xa1b2c3d4 means microsecond fractions, 0xa1b23c4d nanoseconds.

Reading walks the record headers in compiled code (the walk is serial: a record's
caplen gives the next record's offset), a chunk at a time: `PcapReader` for replays,
whose memory is bounded by the chunks kept, `read_pcap` for a whole file at once.
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
from numba import njit

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


READ_CHUNK = 4 << 20  # bytes a PcapReader reads at a time (its read-ahead is a few of these)
# a chunk always holds a whole record of the largest size libpcap accepts
MIN_CHUNK = 2 * (RECORD_HEADER + MAX_SNAPLEN)


@njit(cache=True, nogil=True)
def _u32(buf: np.ndarray, pos: int, big_endian: bool) -> int:
    b0, b1, b2, b3 = (np.int64(buf[pos]), np.int64(buf[pos + 1]), np.int64(buf[pos + 2]),
                      np.int64(buf[pos + 3]))
    if big_endian:
        return (b0 << 24) | (b1 << 16) | (b2 << 8) | b3
    return b0 | (b1 << 8) | (b2 << 16) | (b3 << 24)


@njit(cache=True, nogil=True)
def _walk(buf: np.ndarray, start: int, end: int, big_endian: bool, limit: int, frac_ns: int,
          offsets: np.ndarray, lengths: np.ndarray, ts_ns: np.ndarray) -> tuple[int, int, bool]:
    """The whole records in buf[start:end]: each frame's offset (past its header),
    captured length and time, until the arrays are full or a record does not fit.
    Returns (records, where the walk stopped, whether it stopped at a caplen over
    `limit`). The walk is serial by nature (a record's caplen gives the next record's
    offset): compiled, it runs at memory speed (perf/README.md)."""
    n = 0
    pos = start
    while n < offsets.shape[0] and pos + RECORD_HEADER <= end:
        caplen = _u32(buf, pos + 8, big_endian)
        if caplen > limit:
            return n, pos, True
        if pos + RECORD_HEADER + caplen > end:
            break
        offsets[n] = pos + RECORD_HEADER
        lengths[n] = caplen
        ts_ns[n] = _u32(buf, pos, big_endian) * 1_000_000_000 + _u32(buf, pos + 4,
                                                                      big_endian) * frac_ns
        n += 1
        pos += RECORD_HEADER + caplen
    return n, pos, False


@njit(cache=True, nogil=True)
def pack_frames(buf: np.ndarray, offsets: np.ndarray, lengths: np.ndarray,
                out: np.ndarray) -> None:
    """Frames buf[offsets[i] : offsets[i] + lengths[i]] back to back into `out`."""
    k = 0
    for i in range(offsets.shape[0]):
        start = offsets[i]
        out[k : k + lengths[i]] = buf[start : start + lengths[i]]
        k += lengths[i]


@njit(cache=True, nogil=True)
def _put_u32(out: np.ndarray, pos: int, value: int) -> None:
    out[pos] = value & 0xFF
    out[pos + 1] = (value >> 8) & 0xFF
    out[pos + 2] = (value >> 16) & 0xFF
    out[pos + 3] = (value >> 24) & 0xFF


@njit(cache=True, nogil=True)
def rows_to_records(rows: np.ndarray, idx: np.ndarray, lengths: np.ndarray, ts: np.ndarray,
                    out: np.ndarray, starts: np.ndarray) -> None:
    """Little-endian microsecond pcap records of frames rows[idx[i], :lengths[i]] with
    times ts[i] (ns), back to back in `out`; starts[i]: where record i begins. One
    copy from the pool straight into what the file gets."""
    k = 0
    for i in range(idx.shape[0]):
        n = lengths[i]
        t = ts[i]
        starts[i] = k
        _put_u32(out, k, t // 1_000_000_000)
        _put_u32(out, k + 4, (t % 1_000_000_000) // 1000)
        _put_u32(out, k + 8, n)
        _put_u32(out, k + 12, n)
        out[k + RECORD_HEADER : k + RECORD_HEADER + n] = rows[idx[i], :n]
        k += RECORD_HEADER + n


@njit(cache=True, nogil=True)
def gather_records(src: np.ndarray, starts: np.ndarray, sizes: np.ndarray, order: np.ndarray,
                   out: np.ndarray) -> None:
    """Records src[starts[j] : starts[j] + sizes[j]] for j in `order`, back to back."""
    k = 0
    for j in order:
        n = sizes[j]
        out[k : k + n] = src[starts[j] : starts[j] + n]
        k += n


class PcapReader:
    """A classic pcap capture read in chunks of whole records, for replays of any size:
    memory holds the chunks a caller keeps, never the whole file.

    The global header is checked when the reader is made (every error names the file);
    `read()` returns the next chunk as PcapFrames whose `data` is the chunk's bytes as
    read (record headers included: `offsets` skip them), padded with `pad` zero bytes,
    or None at the end. A damaged or truncated record is a PcapError naming the record
    (counted from 1) and its byte offset, raised when the walk reaches it.
    """

    def __init__(self, path: PathArg, *, chunk_bytes: int = READ_CHUNK, pad: int = 0) -> None:
        self.name = name = str(path)
        self.chunk_bytes = max(int(chunk_bytes), MIN_CHUNK)
        self.pad = pad
        try:
            self.file: BinaryIO | None = open(path, "rb")  # noqa: SIM115 (closed at the end)
        except FileNotFoundError:
            raise PcapError(f"{name}: no such file") from None
        except OSError as e:
            raise PcapError(f"{name}: cannot read: {e.strerror or e}") from None
        try:
            self.size = os.fstat(self.file.fileno()).st_size  # bytes, for progress
            head = self._read_exactly(GLOBAL_HEADER)
            self._check_header(head)
        except PcapError:
            self.close()
            raise
        except OSError as e:  # a directory: EISDIR on the first read
            self.close()
            raise PcapError(f"{name}: cannot read: {e.strerror or e}") from None
        self.records = 0  # records returned so far
        self.offset = GLOBAL_HEADER  # file offset of the first byte not yet returned
        self.carry = np.zeros(0, dtype=np.uint8)  # a record begun in the last chunk
        cap = self.chunk_bytes // RECORD_HEADER + 1
        self._offsets = np.empty(cap, dtype=np.int64)
        self._lengths = np.empty(cap, dtype=np.int64)
        self._ts = np.empty(cap, dtype=np.int64)

    def _read_exactly(self, n: int) -> bytes:
        assert self.file is not None
        parts, got = [], 0
        while got < n:
            part = self.file.read(n - got)
            if not part:
                break
            parts.append(part)
            got += len(part)
        return b"".join(parts)

    def _check_header(self, buf: bytes) -> None:
        name, size = self.name, len(buf)
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
        self.big_endian = big_endian
        self.nanosecond = magic == MAGIC_NSEC
        self.linktype = linktype
        self.snaplen = snaplen
        # as libpcap: a zero or oversized snaplen in the header means "the maximum"
        self.limit = snaplen if 0 < snaplen <= MAX_SNAPLEN else MAX_SNAPLEN

    def read(self) -> PcapFrames | None:
        """The next chunk of whole records, or None when the capture has ended."""
        if self.file is None:
            return None
        carry = len(self.carry)
        buf = np.empty(self.chunk_bytes + self.pad, dtype=np.uint8)
        buf[:carry] = self.carry
        end = carry
        view = memoryview(buf)
        while end < self.chunk_bytes:  # a pipe may return less than asked
            got = self.file.readinto(view[end : self.chunk_bytes])
            if not got:
                break
            end += got
        at_eof = end < self.chunk_bytes
        if self.pad:
            buf[end : end + self.pad] = 0
        n, stop, over = _walk(buf, 0, end, self.big_endian, self.limit,
                              1 if self.nanosecond else 1000,
                              self._offsets, self._lengths, self._ts)
        if over:
            caplen = _u32(buf, stop + 8, self.big_endian)
            self.close()
            raise PcapError(f"{self.name}: record {self.records + n + 1} at byte "
                            f"{self.offset + stop} has a captured length of {caplen} bytes, "
                            f"more than the snapshot length {self.limit}; the file is damaged")
        if at_eof and stop < end:
            left = end - stop
            self.close()
            where = f"{self.name}: record {self.records + n + 1} at byte {self.offset + stop}"
            if left < RECORD_HEADER:
                raise PcapError(f"{where} is truncated: {left} of its {RECORD_HEADER} "
                                "header bytes are present")
            caplen = _u32(buf, stop + 8, self.big_endian)
            raise PcapError(f"{where} is truncated: {left - RECORD_HEADER} of its {caplen} "
                            "captured bytes are present")
        self.carry = buf[stop:end].copy()
        self.records += n
        self.offset += stop
        if at_eof:
            self.close()
            if n == 0:
                return None
        return PcapFrames(data=buf, offsets=self._offsets[:n].copy(),
                          lengths=self._lengths[:n].astype(np.uint32),
                          ts_ns=self._ts[:n].copy(), linktype=self.linktype,
                          snaplen=self.snaplen)

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None

    def __enter__(self) -> PcapReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_pcap(path: PathArg, *, compact: bool = True) -> PcapFrames:
    """Read a whole classic pcap capture of Ethernet frames (either byte order, µs or ns).

    With `compact` (the default) `data` holds only the frames, back to back. Without it
    `data` is the file's bytes as read and `offsets` skip the record headers: no copy,
    for callers that copy the frames elsewhere anyway. Replays of large captures use
    PcapReader, which never holds the whole file.
    """
    try:
        size = os.stat(path).st_size
    except OSError:
        size = 0  # PcapReader says what is wrong
    with PcapReader(path, chunk_bytes=size + 1) as reader:
        frames = reader.read()  # one chunk: the whole file as it was at the stat
    if frames is None:
        return PcapFrames(data=np.zeros(0, np.uint8), offsets=np.zeros(0, np.int64),
                          lengths=np.zeros(0, np.uint32), ts_ns=np.zeros(0, np.int64),
                          linktype=reader.linktype, snaplen=reader.snaplen)
    if not compact:
        return frames
    lengths = frames.lengths.astype(np.int64)
    data = np.empty(int(lengths.sum()), dtype=np.uint8)
    pack_frames(frames.data, frames.offsets, lengths, data)
    out_offsets = np.zeros(len(lengths), dtype=np.int64)
    np.cumsum(lengths[:-1], out=out_offsets[1:])
    return PcapFrames(data=data, offsets=out_offsets, lengths=frames.lengths,
                      ts_ns=frames.ts_ns, linktype=frames.linktype, snaplen=frames.snaplen)


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

    try:
        with PcapFileWriter(path, nanosecond=nanosecond) as out:
            out.write(data, offsets, lengths, ts)
    except OSError as e:  # a full disk, /dev/full, a path under a regular file
        raise cannot_write(name, e) from None


class PcapFileWriter:
    """A classic pcap file written a batch of records at a time (the global header at
    once): a replay's output, whatever its size. Parent folders are created. OSError
    from the OS, as `open` and `write` raise it."""

    def __init__(self, path: PathArg, *, nanosecond: bool = False) -> None:
        target = Path(path)
        if _nearest_folder(target) != target.parent:
            target.parent.mkdir(parents=True, exist_ok=True)
        self.name = str(path)
        self.nanosecond = nanosecond
        self.frames = 0
        self.file: BinaryIO | None = open(target, "wb")  # noqa: SIM115 (closed by close)
        magic = MAGIC_NSEC if nanosecond else MAGIC_USEC
        self.file.write(struct.pack("<IHHiIII", magic, 2, 4, 0, 0, WRITE_SNAPLEN,
                                    LINKTYPE_ETHERNET))

    def write(self, data: np.ndarray, offsets: np.ndarray, lengths: np.ndarray,
              ts: np.ndarray) -> None:
        """Records for frames data[offsets[i]:offsets[i] + lengths[i]], in that order."""
        assert self.file is not None
        for chunk in _records(data, offsets, lengths, ts, self.nanosecond):
            self.file.write(chunk)
        self.frames += len(lengths)

    def write_records(self, records: memoryview, frames: int) -> None:
        """Records already built (header and frame each, as `write` builds them)."""
        assert self.file is not None
        self.file.write(records)
        self.frames += frames

    def flush(self) -> None:
        if self.file is not None:
            self.file.flush()

    def close(self) -> None:
        if self.file is not None:
            file, self.file = self.file, None
            file.close()

    def __enter__(self) -> PcapFileWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


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


class PcapngWriter:
    """A pcapng written as frames come, one interface per port (`fwd capture any`): a
    reader sees which port each frame used (tcpdump -e prints nothing of it, Wireshark's
    frame.interface_name does). Nanosecond times (if_tsresol 9), little-endian."""

    SHB, IDB, EPB = 0x0A0D0D0A, 0x00000001, 0x00000006
    OPT_IF_NAME, OPT_IF_TSRESOL = 2, 9

    def __init__(self, out: BinaryIO, interfaces: Sequence[str]) -> None:
        self.out = out
        self.frames = 0
        self.interfaces = len(interfaces)
        blocks = [self._block(self.SHB, struct.pack("<IHHq", 0x1A2B3C4D, 1, 0, -1))]
        for name in interfaces:
            opts = (self._option(self.OPT_IF_NAME, name.encode())
                    + self._option(self.OPT_IF_TSRESOL, bytes([9])) + struct.pack("<HH", 0, 0))
            blocks.append(self._block(self.IDB, struct.pack("<HHI", LINKTYPE_ETHERNET, 0,
                                                            WRITE_SNAPLEN) + opts))
        out.write(b"".join(blocks))
        out.flush()

    @staticmethod
    def _pad(data: bytes) -> bytes:
        return data + bytes(-len(data) % 4)

    def _option(self, code: int, value: bytes) -> bytes:
        return struct.pack("<HH", code, len(value)) + self._pad(value)

    def _block(self, kind: int, body: bytes) -> bytes:
        size = 12 + len(body)
        return struct.pack("<II", kind, size) + body + struct.pack("<I", size)

    def write(self, frames: Sequence[bytes], ts_ns: Sequence[int],
              interfaces: Sequence[int]) -> None:
        parts = []
        for frame, ts, iface in zip(frames, ts_ns, interfaces, strict=True):
            if not 0 <= iface < self.interfaces:
                raise PcapError(f"interface {iface} of a frame: the capture has "
                                f"{self.interfaces}")
            parts.append(self._block(self.EPB, struct.pack(
                "<IIIII", iface, ts >> 32, ts & 0xFFFFFFFF, len(frame), len(frame))
                + self._pad(frame)))
        self.out.write(b"".join(parts))
        self.out.flush()
        self.frames += len(frames)


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
