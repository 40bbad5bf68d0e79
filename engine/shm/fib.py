"""DIR-24-8 longest-prefix-match FIB in shared memory (DPDK `rte_lpm` layout).

The control process creates, owns and writes the table (`FibWriter`); every
forwarding worker and the slow path map it read-only (`FibReader`) and answer a
whole batch of lookups in one call. Two implementations share the layout and the
rules below: compiled kernels (`engine.shm.fib_kernels`, numba; the default) and
numpy calls (`impl="numpy"`). Addresses and prefixes are host-order ints / uint32.

Segment layout (one shared-memory segment, see `engine.shm.layout`)
    meta        uint64[8]        magic, layout version, tbl8 groups G, reader slots R
    generation  uint64           bumped after every published change (the kernel's rt_genid)
    token       uint64           grace-period token of the reclamation scheme
    readers     uint64[R, 8]     one quiescent counter per reader, each on its own cache line
    tbl24       uint32[2^24]     indexed by addr >> 8
    tbl8        uint32[G * 256]  G groups of 256: group g's entry for low byte b is g * 256 + b

Entries: a plain entry (bit 31 clear) is the next-hop index itself, 1 .. 2^24-1, 0
meaning "no route"; an extended entry (tbl24 only) is (g - G) * 256 as an int32,
group g's offset from the END of tbl8, so int32(entry) + (addr & 0xff) is a negative
index that numpy's take() wraps to g * 256 + (addr & 0xff). rte_lpm's per-entry
depth (prefix length) only the writer needs: it lives in the writer's private shadow
arrays, not in the shared entries.

Publication: every entry goes from its old to its new value with one aligned 32-bit
store and exactly one entry decides any address, so a reader sees the old or the new
route, never a third; a new group is fully written before the tbl24 store that links
it. x86-64's TSO keeps those stores, and a reader's dependent loads, in order; this
module assumes x86-64 (weakly ordered CPUs would need barriers numpy cannot issue).

Reclamation (quiescent-state based, after DPDK's rte_rcu_qsbr): a group the writer
unlinks may still be read by a reader that loaded the old tbl24 entry, so it is
reused only once every registered reader has passed a quiescent state
(`FibReader.quiescent`, between batches) after the unlinking (`FibWriter._release`).
Readers must call it regularly, also when idle, and a dead reader's slot must be
cleared by the owner (`unregister_reader`), or reclamation stalls.
"""

from __future__ import annotations

import operator
import secrets
import sys
import threading
import time
from collections import deque
from collections.abc import Iterable, Iterator
from multiprocessing import shared_memory
from typing import ClassVar

import numpy as np

from engine.shm.layout import Field, Layout, Mapping, attach_segment, create_segment

EXT = 0x8000_0000  # set in every extended tbl24 entry (and in no plain entry)
MAX_NH = (1 << 24) - 1
TBL24_SIZE = 1 << 24
GROUP_SIZE = 256
MAX_TBL8_GROUPS = 1 << 23  # (group - G) * 256 must fit an int32
_EXT_U32 = np.uint32(EXT)
_SHIFT8 = np.array(8, dtype=np.uint32)  # 0-d operands dispatch faster than Python ints
_LOW_BYTE = 0 if sys.byteorder == "little" else 3  # where addr & 0xff sits in a uint32
DEFAULT_READERS = 64
IMPLS = ("jit", "numpy")  # compiled kernels (engine.shm.fib_kernels), or numpy calls only
DEFAULT_IMPL = "jit"

_MAGIC = 0x4657_445F_4649_4231  # "FWD_FIB1"
_VERSION = 1
_META_MAGIC, _META_VERSION, _META_GROUPS, _META_READERS = range(4)

_FENCE_LOCK = threading.Lock()


class FibError(Exception):
    """Base class of FIB errors."""


class Tbl8Exhausted(FibError):
    """No tbl8 group is free for a prefix longer than /24; the table is unchanged."""


def _full_fence() -> None:
    # Orders this process's earlier stores before its later loads (x86 may otherwise
    # satisfy a load before an older store leaves the store buffer).  Taking an
    # uncontended CPython lock is a lock-prefixed compare-and-swap in glibc's
    # semaphore/mutex fast path, which is a full barrier on x86.
    _FENCE_LOCK.acquire()
    _FENCE_LOCK.release()


def _layout(groups: int, readers: int) -> Layout:
    return Layout(
        [
            Field("meta", np.dtype(np.uint64), (8,)),
            Field("generation", np.dtype(np.uint64), (1,)),
            Field("token", np.dtype(np.uint64), (1,)),
            # one cache line per reader: each worker stores to its own slot every batch
            Field("readers", np.dtype(np.uint64), (readers, 8)),
            Field("tbl24", np.dtype(np.uint32), (TBL24_SIZE,)),
            Field("tbl8", np.dtype(np.uint32), (groups * GROUP_SIZE,)),
        ]
    )


_MASKS = tuple((0xFFFF_FFFF << (32 - n)) & 0xFFFF_FFFF for n in range(33))
_HOSTS = tuple(0xFFFF_FFFF >> n for n in range(33))


def _check_route(prefix: int, prefix_len: int) -> tuple[int, int]:
    prefix = operator.index(prefix)
    prefix_len = operator.index(prefix_len)
    if not 0 <= prefix_len <= 32:
        raise ValueError(f"prefix length {prefix_len} not in 0..32")
    if not 0 <= prefix <= 0xFFFF_FFFF:
        raise ValueError(f"prefix {prefix:#x} is not an IPv4 address")
    if prefix & _HOSTS[prefix_len]:
        raise ValueError(f"prefix {_fmt(prefix, prefix_len)} has host bits set")
    return prefix, prefix_len


def _kernels(impl: str):  # -> the fib_kernels module, or None
    if impl not in IMPLS:
        raise ValueError(f"impl {impl!r} not in {IMPLS}")
    if impl == "numpy":
        return None
    # imported here, not at the top: numba costs ~0.5 s to import and the kernels are
    # compiled or loaded from its cache on import, which must happen when a process
    # maps the table, not when it looks up its first packet
    from engine.shm import fib_kernels

    return fib_kernels


def _fits(out: object, shape: tuple[int, ...]) -> bool:
    """`out` is an array the compiled lookup can write as it is."""
    return (
        isinstance(out, np.ndarray)
        and out.dtype == np.uint32
        and out.shape == shape
        and out.flags.c_contiguous
        and out.flags.writeable
    )


def _fmt(prefix: int, prefix_len: int) -> str:
    return (
        f"{prefix >> 24}.{(prefix >> 16) & 255}.{(prefix >> 8) & 255}.{prefix & 255}/{prefix_len}"
    )


class FibReader:
    """A mapping of a FIB segment: lookups, the generation, and reader slots (QSBR).

    `attach` maps an existing segment read-only; `FibWriter` is this plus writing. A
    reader must be registered (`register_reader`, or `attach(name, reader_id)`) to
    look up while the writer changes the table, and call `quiescent` between batches."""

    _writable: ClassVar[bool] = False  # a FibWriter maps the tables writable

    def __init__(
        self, shm: shared_memory.SharedMemory | Mapping, impl: str = DEFAULT_IMPL
    ) -> None:
        # use FibReader.attach / FibWriter.create
        self._k = _kernels(impl)
        self._impl = impl
        self._shm = shm
        meta = np.ndarray((8,), dtype=np.uint64, buffer=shm.buf)
        if int(meta[_META_MAGIC]) != _MAGIC or int(meta[_META_VERSION]) != _VERSION:
            del meta
            raise ValueError(f"shared memory segment {shm.name!r} is not a fwd FIB (v{_VERSION})")
        self._groups = int(meta[_META_GROUPS])
        self._nreaders = int(meta[_META_READERS])
        del meta
        layout = _layout(self._groups, self._nreaders)
        if shm.size < layout.size:
            raise ValueError(f"shared memory segment {shm.name!r} is too small for its layout")
        v = layout.views(shm.buf)
        self._meta = v["meta"]
        self._gen = v["generation"]
        self._token = v["token"]
        self._readers = v["readers"]
        self._tbl24 = v["tbl24"]
        self._tbl8 = v["tbl8"]
        self._tbl8_2d = self._tbl8.reshape(self._groups, GROUP_SIZE)
        self._my_readers: set[int] = set()
        self._closed = False
        if not self._writable:  # a reader stores only to its own `readers` slots
            for a in (self._meta, self._gen, self._token, self._tbl24, self._tbl8, self._tbl8_2d):
                a.flags.writeable = False

    # ------------------------------------------------------------------ lifecycle

    @staticmethod
    def attach(
        name: str, reader_id: int | None = None, impl: str = DEFAULT_IMPL
    ) -> FibReader:
        """Map an existing FIB read-only; with `reader_id`, also `register_reader` it.
        `impl` "jit" looks up with the compiled kernels, "numpy" with numpy calls."""
        shm = attach_segment(name)
        try:
            fib = FibReader(shm, impl)
        except BaseException:
            shm.close()
            raise
        if reader_id is not None:
            fib.register_reader(reader_id)
        return fib

    @property
    def name(self) -> str:
        return self._shm.name

    @property
    def impl(self) -> str:
        return self._impl

    @property
    def tbl8_groups(self) -> int:
        return self._groups

    @property
    def max_readers(self) -> int:
        return self._nreaders

    @property
    def generation(self) -> int:
        """Number of changes published so far (read it to notice any change)."""
        return int(self._gen[0])

    def close(self) -> None:
        """Unmap the segment (unregistering this handle's readers first)."""
        if self._closed:
            return
        for r in list(self._my_readers):
            self.unregister_reader(r)
        self._closed = True
        # numpy views pin the mapping: drop them all before closing it
        for attr in ("_meta", "_gen", "_token", "_readers", "_tbl24", "_tbl8", "_tbl8_2d"):
            setattr(self, attr, None)
        self._shm.close()

    def __enter__(self) -> FibReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<FibReader {self.name!r}>"

    # ------------------------------------------------------------------ lookups

    def lookup(self, addrs: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """Next-hop index for each address (0 = no route), vectorised over the batch."""
        if out is None and getattr(addrs, "shape", None) == (1,):  # slow path: one packet
            return np.array([self.lookup_one(int(addrs[0]))], dtype=np.uint32)
        a = np.ascontiguousarray(addrs, dtype=np.uint32)  # no copy when it already is
        if a.ndim != 1:
            return self.lookup(a.reshape(-1)).reshape(a.shape)
        if self._k is not None and (out is None or _fits(out, a.shape)):
            res = np.empty(a.shape, dtype=np.uint32) if out is None else out
            self._k.lookup(self._tbl24, self._tbl8, a, res)
            return res
        # numpy: also the compiled path's fallback for any other `out`, which take()
        # casts or rejects as it always did
        # mode="clip" skips numpy's per-index bounds check (the indices are in range
        # by construction): ~20 % of the gather at batch 1024
        res = self._tbl24.take(np.right_shift(a, _SHIFT8), out=out, mode="clip")
        # nonzero() on the comparison, not an any()/argmax() test first: numpy's
        # reductions cost as much as this, and most batches of real traffic have a few
        # extended entries anyway (measured)
        ext = (res >= _EXT_U32).nonzero()[0]
        if ext.size:
            # the extended entry, as int32, is the group's offset from the END of tbl8;
            # adding the address's low byte (a strided uint8 view, no arithmetic) gives
            # a negative index that take() wraps to group * 256 + low byte
            j = res[ext].view(np.int32) + a.view(np.uint8)[_LOW_BYTE::4][ext]
            res[ext] = self._tbl8.take(j)
        return res

    @property
    def dir24_8(self) -> tuple[np.ndarray, np.ndarray]:
        """(tbl24, tbl8) as the readers' views: for a compiled lookup that walks them
        as `lookup` does (engine/pipeline/compiled.py)."""
        return self._tbl24, self._tbl8

    def lookup_one(self, addr: int) -> int:
        """Scalar convenience lookup (slow path, tests)."""
        e = int(self._tbl24[addr >> 8])
        if e & EXT:
            e = int(self._tbl8[(self._group_of(e) << 8) | (addr & 0xFF)])
        return e

    def _group_of(self, entry: int) -> int:
        return self._groups - ((0x1_0000_0000 - entry) >> 8)

    # ------------------------------------------------------------------ readers (QSBR)

    def register_reader(self, reader_id: int) -> None:
        """Declare this process reader `reader_id` (a slot number the caller assigns,
        e.g. the worker index); from now on it must call `quiescent` between batches."""
        self._check_reader_id(reader_id)
        if int(self._readers[reader_id, 0]) != 0:
            raise ValueError(f"reader slot {reader_id} is already registered")
        self._readers[reader_id, 0] = self._token[0]
        # the slot store must be visible before this reader's first table load, or the
        # writer could see the slot offline and recycle a group we are about to read
        _full_fence()
        self._my_readers.add(reader_id)

    def unregister_reader(self, reader_id: int) -> None:
        """Take a reader offline (it holds no table references any more).  The owner
        may do this for a reader process it knows is dead."""
        self._check_reader_id(reader_id)
        self._readers[reader_id, 0] = 0
        self._my_readers.discard(reader_id)

    def quiescent_words(self, reader_id: int) -> tuple[np.ndarray, np.ndarray]:
        """(the reader's counter, the writer's token) as one-element views: `quiescent`
        is copying the second into the first (for a compiled worker pass)."""
        self._check_reader_id(reader_id)
        return self._readers[reader_id, 0:1], self._token[0:1]

    def quiescent(self, reader_id: int) -> None:
        """Report that this reader holds no references into the table (call between
        batches): copy the writer's token into the reader's counter."""
        self._readers[reader_id, 0] = self._token[0]

    def _check_reader_id(self, reader_id: int) -> None:
        if not 0 <= reader_id < self._nreaders:
            raise ValueError(f"reader id {reader_id} not in 0..{self._nreaders - 1}")


class FibWriter(FibReader):
    """The owner's handle (`create`): a `FibReader` that also adds, deletes, bulk-loads
    and publishes routes, and unlinks the segment. Only the owner process writes,
    from one thread.

    Updates follow rte_lpm's algorithm, on the private shadow depths (`_d24`, `_d8`):

    add p/d:  every entry the prefix covers whose depth is <= d takes the new next hop
              (deeper entries belong to more specific routes and stay). d > 24 under a
              plain tbl24 entry: take a group from the free list, fill all 256 entries
              with the old tbl24 value, write the prefix's range, and only then point
              the tbl24 entry at the group.
    delete:   the entries whose depth == d (exactly those the prefix wrote) take the
              next less-specific route covering the prefix (found in the route dict)
              or 0. d > 24: if no entry of the group is deeper than 24 any more, the
              group is uniform: the tbl24 entry collapses back to that plain value and
              the group is released (`_release`).
    bulk_load: rebuild the whole table privately from the route dict with numpy range
              fills (shorter prefixes first, so longer ones overwrite them), then
              publish it by rewriting only the entries that differ, under the same rules.

    The route set `{prefix/len: nh}` beside the arrays is the source of truth
    (`routes()`, the covering-route search, `bulk_load`): with the compiled kernels a
    hash table in arrays they own (`fib_kernels`), so that an add or delete, covering
    route and generation included, is one compiled call, and `apply` does a whole
    batch of them in one; with numpy a dict. Each published change bumps the
    generation. When a group is needed and none is free, the writer waits up to
    `reclaim_timeout` seconds for readers to move on, then raises `Tbl8Exhausted` with
    the table unchanged."""

    #: seconds the writer waits for readers to pass a quiescent state when it needs a
    #: tbl8 group and only deferred ones are left
    reclaim_timeout: float = 0.1

    _writable = True

    def __init__(
        self, shm: shared_memory.SharedMemory | Mapping, impl: str = DEFAULT_IMPL
    ) -> None:
        # use FibWriter.create
        super().__init__(shm, impl)
        self._d24 = np.zeros(TBL24_SIZE, dtype=np.uint8)
        self._d8 = np.zeros(self._groups * GROUP_SIZE, dtype=np.uint8)
        self._d8_2d = self._d8.reshape(self._groups, GROUP_SIZE)
        # LIFO: a just-freed group is likely still in cache
        self._free: list[int] = list(range(self._groups - 1, -1, -1))
        self._deferred: deque[tuple[int, list[int]]] = deque()
        if self._k is None:
            # key: prefix << 6 | prefix_len (an int hashes and compares faster than a
            # tuple: a delete's covering-route search probes it once per length present)
            self._routes: dict[int, int] = {}
            # routes per length, and per length d the present lengths < d, longest
            # first: the covering-route search skips lengths nobody uses
            self._len_count = [0] * 33
            self._recount()
            self._change = None
        else:
            # the route set in arrays the kernels own (fib_kernels' hash table): add and
            # delete, the covering-route search included, are one compiled call
            self._rt = np.full((_MIN_ROUTE_ROWS, 2), self._k.EMPTY, dtype=np.int64)
            self._counts = np.zeros(self._k.TOTAL + 1, dtype=np.int64)
            # the compiled change called straight, past the dispatcher's type check of
            # its 13 arguments (its one signature is declared): the check would add
            # 0.3-0.7 µs to the call's ~0.8 µs (measured; unboxing the 8 arrays is most)
            self._change = next(iter(self._k.change.overloads.values())).entry_point
            self._apply = next(iter(self._k.apply.overloads.values())).entry_point

    # ------------------------------------------------------------------ lifecycle

    @classmethod
    def create(
        cls,
        name: str | None = None,
        tbl8_groups: int = 4096,
        max_readers: int = DEFAULT_READERS,
        impl: str = DEFAULT_IMPL,
    ) -> FibWriter:
        """Create an empty FIB segment; the caller owns it (writes, unlinks). `impl`:
        "jit" updates, builds and looks up with the compiled kernels, "numpy" without."""
        _kernels(impl)  # an unknown impl fails before the segment exists
        if not 1 <= tbl8_groups <= MAX_TBL8_GROUPS:
            raise ValueError(f"tbl8_groups must be in 1..{MAX_TBL8_GROUPS}")
        if not 1 <= max_readers <= 4096:
            raise ValueError("max_readers must be in 1..4096")
        name = name or f"fwd-fib-{secrets.token_hex(6)}"
        layout = _layout(tbl8_groups, max_readers)
        shm = create_segment(name, layout.size)  # fresh POSIX shm is zero-filled
        meta = np.ndarray((8,), dtype=np.uint64, buffer=shm.buf)
        meta[_META_GROUPS] = tbl8_groups
        meta[_META_READERS] = max_readers
        meta[_META_VERSION] = _VERSION
        meta[_META_MAGIC] = _MAGIC  # last: an attacher that sees the magic sees the rest
        del meta
        v = layout.views(shm.buf)
        v["token"][0] = 1  # online readers hold a token >= 1; 0 means offline
        del v
        return cls(shm, impl)

    def unlink(self) -> None:
        """Remove the segment's name; mappings stay valid until closed."""
        self._shm.unlink()

    def __enter__(self) -> FibWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        # the owner's table dies with its context
        self.close()
        try:
            self.unlink()
        except FileNotFoundError:
            pass

    def __repr__(self) -> str:
        n = "" if self._closed else f", {len(self)} routes"
        return f"<FibWriter {self.name!r}{n}>"

    def close(self) -> None:
        self._change = None  # add/delete take the checked path, which says "closed"
        super().close()

    def _ext_entry(self, group: int) -> int:
        """The tbl24 entry that leads to `group`: (group - G) * 256 as a uint32."""
        return ((group - self._groups) << 8) & 0xFFFF_FFFF

    def _groups_of(self, entries: np.ndarray) -> np.ndarray:
        return self._groups - ((0x1_0000_0000 - entries.astype(np.int64)) >> 8)

    # ------------------------------------------------------------------ route table

    def routes(self) -> Iterator[tuple[int, int, int]]:
        """(prefix, prefix_len, nh) of every route (in no particular order)."""
        self._check_open()
        if self._k is None:
            for key, nh in list(self._routes.items()):
                yield key >> 6, key & 63, nh
            return
        p, plen, nh = self._k.route_items(self._rt)
        yield from zip(p.tolist(), plen.tolist(), nh.tolist(), strict=True)

    def get(self, prefix: int, prefix_len: int) -> int | None:
        """Next hop of exactly this route, or None."""
        self._check_open()
        if self._k is None:
            return self._routes.get(prefix << 6 | prefix_len)
        if not (0 <= prefix_len <= 32 and 0 <= prefix <= 0xFFFF_FFFF):
            return None
        nh = self._k.route_get(self._rt, prefix << 6 | prefix_len)
        return None if nh < 0 else nh

    def __len__(self) -> int:
        self._check_open()
        return len(self._routes) if self._k is None else int(self._counts[self._k.TOTAL])

    def __contains__(self, route: object) -> bool:
        self._check_open()
        if not (isinstance(route, tuple) and len(route) == 2):
            return False
        return self.get(*route) is not None

    def stats(self, reclaim: bool = True) -> dict[str, int]:
        """tbl8 group usage; reclaims what readers have released first (only the
        writer's thread may: another thread passes reclaim=False and reads)."""
        self._check_open()
        if reclaim:
            self._reclaim(0.0)
        deferred = sum(len(gs) for _, gs in list(self._deferred))  # one C call: a snapshot
        return {
            "routes": len(self),
            "tbl8_groups": self._groups,
            "tbl8_free": len(self._free),
            "tbl8_deferred": deferred,
            "tbl8_used": self._groups - len(self._free) - deferred,
            "generation": self.generation,
        }

    # ------------------------------------------------------------------ updates

    def add(self, prefix: int, prefix_len: int, nh: int) -> None:
        """Add prefix/prefix_len → nh, replacing the route's next hop if present."""
        if self._change is not None and type(prefix) is type(prefix_len) is type(nh) is int:
            # the usual call (plain ints, compiled kernels) straight to the kernel, which
            # checks the ranges itself: one compiled call is most of the update
            free = self._free
            try:
                status = self._change(
                    self._tbl24, self._d24, self._tbl8, self._d8, self._groups, self._rt,
                    self._counts, self._gen, prefix, prefix_len, nh, True,
                    free[-1] if free else -1,
                )  # fmt: skip
            except OverflowError:  # an int past int64: the checks below say which
                pass
            else:
                if status:
                    self._changed(status, prefix, prefix_len, nh, True)
                return
        self._check_open()
        prefix, prefix_len = _check_route(prefix, prefix_len)
        nh = operator.index(nh)
        if not 1 <= nh <= MAX_NH:
            raise ValueError(f"next-hop index {nh} not in 1..{MAX_NH}")
        if self._k is not None:
            self._change_checked(prefix, prefix_len, nh, True)
            return
        if prefix_len <= 24:
            lo = prefix >> 8
            self._update24(lo, lo + (1 << (24 - prefix_len)), prefix_len, nh, prefix_len, True)
        else:
            self._add_long(prefix, prefix_len, nh)  # may raise Tbl8Exhausted, nothing changed
        key = prefix << 6 | prefix_len
        if key not in self._routes:
            self._count_length(prefix_len, 1)
        self._routes[key] = nh
        self._gen[0] += 1

    def delete(self, prefix: int, prefix_len: int) -> None:
        """Delete a route (KeyError if absent); the next less-specific route takes over."""
        if self._change is not None and type(prefix) is type(prefix_len) is int:
            try:
                status = self._change(
                    self._tbl24, self._d24, self._tbl8, self._d8, self._groups, self._rt,
                    self._counts, self._gen, prefix, prefix_len, 0, False, -1,
                )  # fmt: skip
            except OverflowError:  # an int past int64: the checks below say which
                pass
            else:
                if status:
                    self._changed(status, prefix, prefix_len, 0, False)
                return
        self._check_open()
        prefix, prefix_len = _check_route(prefix, prefix_len)
        if self._k is not None:
            self._change_checked(prefix, prefix_len, 0, False)
            return
        key = prefix << 6 | prefix_len
        if key not in self._routes:
            raise KeyError(_fmt(prefix, prefix_len))
        sub_nh, sub_len = self._covering(prefix, prefix_len)
        if prefix_len <= 24:
            lo = prefix >> 8
            hi = lo + (1 << (24 - prefix_len))
            self._update24(lo, hi, prefix_len, sub_nh, sub_len, False)
        else:
            self._delete_long(prefix, prefix_len, sub_nh, sub_len)
        del self._routes[key]
        self._count_length(prefix_len, -1)
        self._gen[0] += 1

    def apply(
        self, updates: Iterable[tuple[int, int, int]] | tuple[np.ndarray, np.ndarray, np.ndarray]
    ) -> int:
        """Apply route changes in order, as `add` and `delete` one at a time would:
        (prefix, prefix_len, nh) adds the route or replaces its next hop, nh 0 deletes
        it. For a feed of changes (a routing daemon's, `route load`): the compiled
        kernels do the whole batch in one call. `updates` is an iterable of triples or
        a tuple of three arrays. Returns the number applied (all of them).

        Every change is published on its own (readers may see any prefix of the
        batch, one generation each). A bad triple (ValueError) is found before
        anything changes; a delete of a route that is not there (KeyError) or
        Tbl8Exhausted stops the batch there: the changes before it stay applied and
        the exception's `applied` attribute says how many they were."""
        self._check_open()
        p, plen, nh = _route_arrays(updates, deletes=True)
        if self._k is None:
            done = 0
            try:
                for a, b, c in zip(p.tolist(), plen.tolist(), nh.tolist(), strict=True):
                    if c:
                        self.add(a, b, c)
                    else:
                        self.delete(a, b)
                    done += 1
            except (KeyError, Tbl8Exhausted) as err:
                err.applied = done  # type: ignore[attr-defined]
                raise
            return done
        k = self._k
        adds = nh != 0
        self._fit_routes(int(np.count_nonzero(adds)))  # the route set never fills mid-batch
        long_adds = np.cumsum(adds & (plen > 24))  # an upper bound on the groups needed
        long_dels = np.cumsum(~adds & (plen > 24))  # on the groups freed
        done = 0
        while done < p.size:
            before = int(long_adds[done - 1]) if done else 0
            n_spare = min(len(self._free), int(long_adds[-1]) - before)
            spare = np.array(self._free[len(self._free) - n_spare :][::-1], dtype=np.int64)
            freed = np.empty(int(long_dels[-1]) - (int(long_dels[done - 1]) if done else 0),
                             dtype=np.int64)  # fmt: skip
            n, status, used, n_freed = self._apply(
                self._tbl24, self._d24, self._tbl8, self._d8, self._groups, self._rt,
                self._counts, self._gen, p[done:], plen[done:], nh[done:], spare, freed,
            )  # fmt: skip
            del self._free[len(self._free) - used :]  # spare[:used], taken from the top
            for g in freed[:n_freed].tolist():  # as one delete at a time would: a token each
                self._release([g])
            done += n
            if status == k.DONE:
                break
            try:
                if status == k.NEED_GROUP:
                    self._reserve(1)  # waits for readers, or raises Tbl8Exhausted
                elif status == k.NO_ROUTE:
                    raise KeyError(_fmt(int(p[done]), int(plen[done])))
                elif status == k.ROUTES_FULL:
                    self._fit_routes(int(np.count_nonzero(adds[done:])))
                else:
                    raise AssertionError(f"fib_kernels.apply: status {status}")
            except (KeyError, Tbl8Exhausted) as err:
                err.applied = done  # type: ignore[attr-defined]
                raise
        return done

    def _changed(self, status: int, prefix: int, prefix_len: int, nh: int, add: bool) -> None:
        """The rest of an add or delete after the compiled change returned `status`:
        take or release a group, or deal with what stopped it (nothing changed then)."""
        k = self._k
        if status == k.DONE_NEW_GROUP:
            self._free.pop()  # the kernel took the top group we passed it
        elif status >= k.FREED:
            self._release([status - k.FREED])
        elif status == k.NO_ROUTE:
            raise KeyError(_fmt(prefix, prefix_len))
        elif status == k.INVALID:
            # the plain checks say what is wrong (they raise)
            _check_route(prefix, prefix_len)
            if add and not 1 <= nh <= MAX_NH:
                raise ValueError(f"next-hop index {nh} not in 1..{MAX_NH}")
            raise AssertionError(f"fib_kernels.change: {_fmt(prefix, prefix_len)} invalid")
        elif status == k.NEED_GROUP:
            self._reserve(1)  # waits for readers, or raises Tbl8Exhausted: nothing changed
            self._change_checked(prefix, prefix_len, nh, add)
        elif status == k.ROUTES_FULL:
            self._fit_routes(1)
            self._change_checked(prefix, prefix_len, nh, add)
        else:
            raise AssertionError(f"fib_kernels.change: status {status}")

    def _change_checked(self, prefix: int, prefix_len: int, nh: int, add: bool) -> None:
        """The compiled change for checked ints (add/delete's other callers)."""
        free = self._free
        status = self._change(
            self._tbl24, self._d24, self._tbl8, self._d8, self._groups, self._rt,
            self._counts, self._gen, prefix, prefix_len, nh, add, free[-1] if free else -1,
        )  # fmt: skip
        if status:
            self._changed(status, prefix, prefix_len, nh, add)

    def _fit_routes(self, more: int) -> None:
        """Grow the compiled route set so that `more` new routes fit (at most half full)."""
        need = 2 * (int(self._counts[self._k.TOTAL]) + more)
        if need > len(self._rt):
            self._rt, self._counts = self._k.routes_with(
                self._rt, *_NO_ROUTES, _rows_for(need // 2))

    def _check_open(self) -> None:
        if self._closed:
            raise ValueError("FIB is closed")

    def _covering(self, prefix: int, prefix_len: int) -> tuple[int, int]:
        """(nh, len) of the longest route strictly shorter than prefix_len that covers
        prefix; (0, 0) when there is none (0 is "no route", and an empty entry has
        shadow depth 0). The numpy path's; the compiled one's is fib_kernels._covering."""
        get = self._routes.get
        for plen in self._shorter[prefix_len]:  # only lengths the table has
            nh = get((prefix & _MASKS[plen]) << 6 | plen)
            if nh is not None:
                return nh, plen
        return 0, 0

    def _count_length(self, prefix_len: int, delta: int) -> None:
        n = self._len_count[prefix_len] = self._len_count[prefix_len] + delta
        if n == delta or n == 0:  # a length appeared or disappeared
            self._recount()

    def _recount(self) -> None:
        present = [n for n in range(33) if self._len_count[n]]
        self._shorter = tuple(tuple(n for n in reversed(present) if n < d) for d in range(33))

    def _update24(self, lo: int, hi: int, depth: int, nh: int, new_depth: int, add: bool) -> None:
        """Rewrite tbl24[lo:hi] (and the groups under it) for a route of length depth <= 24.

        add: entries with depth <= depth take (nh, new_depth); delete: entries with
        depth == depth (the deleted route's) take the covering route (nh, new_depth)."""
        if hi - lo <= 8:
            # /21../24, most of a full table's churn: a Python loop over a few entries
            # beats a dozen numpy calls on tiny slices
            t24, d24 = self._tbl24, self._d24
            for i, e, d in zip(
                range(lo, hi), t24[lo:hi].tolist(), d24[lo:hi].tolist(), strict=True
            ):
                if e & EXT:
                    self._update8(self._group_of(e), 0, GROUP_SIZE, depth, nh, new_depth, add)
                elif d <= depth if add else d == depth:
                    if e != nh:
                        t24[i] = nh
                    d24[i] = new_depth
            return
        v = self._tbl24[lo:hi]
        dv = self._d24[lo:hi]
        ext = v >= _EXT_U32
        sel = (dv <= depth) if add else (dv == depth)
        sel &= ~ext
        dv[sel] = new_depth
        sel &= v != nh  # store only what changes: fewer cache lines taken from readers
        v[sel] = nh  # masked assignment: one 32-bit store per selected entry
        if ext.any():
            groups = self._groups_of(v[ext])
            dg = self._d8_2d[groups]
            sel = (dg <= depth) if add else (dg == depth)
            rows, cols = np.nonzero(sel)
            self._tbl8_2d[groups[rows], cols] = nh
            self._d8_2d[groups[rows], cols] = new_depth

    def _update8(
        self, group: int, lo: int, hi: int, depth: int, nh: int, new_depth: int, add: bool
    ) -> None:
        base = group << 8
        if hi - lo == 1:
            i = base + lo
            d = int(self._d8[i])
            if d <= depth if add else d == depth:
                if int(self._tbl8[i]) != nh:
                    self._tbl8[i] = nh
                self._d8[i] = new_depth
            return
        v = self._tbl8[base + lo : base + hi]
        dv = self._d8[base + lo : base + hi]
        sel = (dv <= depth) if add else (dv == depth)
        v[sel] = nh
        dv[sel] = new_depth

    def _add_long(self, prefix: int, prefix_len: int, nh: int) -> None:
        i = prefix >> 8
        lo = prefix & 0xFF
        hi = lo + (1 << (32 - prefix_len))
        e = int(self._tbl24[i])
        if e & EXT:
            self._update8(self._group_of(e), lo, hi, prefix_len, nh, prefix_len, True)
            return
        g = self._alloc_group()
        base = g << 8
        # the group is unreachable until the tbl24 store below: fill it in any order
        self._tbl8[base : base + GROUP_SIZE] = e
        self._d8[base : base + GROUP_SIZE] = self._d24[i]
        self._tbl8[base + lo : base + hi] = nh
        self._d8[base + lo : base + hi] = prefix_len
        self._tbl24[i] = self._ext_entry(g)  # publish: one store, after the group's (TSO order)
        self._d24[i] = 0

    def _delete_long(self, prefix: int, prefix_len: int, sub_nh: int, sub_len: int) -> None:
        i = prefix >> 8
        e = int(self._tbl24[i])
        assert e & EXT, "a route longer than /24 always sits in a tbl8 group"
        g = self._group_of(e)
        base = g << 8
        lo = prefix & 0xFF
        self._update8(g, lo, lo + (1 << (32 - prefix_len)), prefix_len, sub_nh, sub_len, False)
        dg = self._d8[base : base + GROUP_SIZE]
        if int(dg.max()) <= 24:
            # nothing longer than /24 left: every entry holds the same (covering /<=24
            # route or none), so the tbl24 entry can hold it directly
            self._tbl24[i] = self._tbl8[base]  # one store: readers now bypass the group
            self._d24[i] = dg[0]
            self._release([g])

    # ------------------------------------------------------------------ tbl8 groups

    def _alloc_group(self) -> int:
        if not self._free:
            self._reclaim(self.reclaim_timeout)
        if not self._free:
            raise self._exhausted(1)
        return self._free.pop()

    def _reserve(self, n: int) -> None:
        if len(self._free) < n:
            self._reclaim(self.reclaim_timeout, need=n)
        if len(self._free) < n:
            raise self._exhausted(n)

    def _exhausted(self, n: int) -> Tbl8Exhausted:
        deferred = sum(len(gs) for _, gs in self._deferred)
        return Tbl8Exhausted(
            f"FIB {self.name}: need {n} tbl8 group(s), {len(self._free)} free of "
            f"{self._groups} ({deferred} waiting for readers to pass a quiescent state); "
            "create the FIB with more tbl8_groups"
        )

    def _release(self, groups: list[int]) -> None:
        """Release groups the tbl24 no longer points at (call after that store).

        With no reader online they are free at once. Otherwise `token += 1` is stored
        after the unlinking stores and the groups wait on the deferred list with that
        value t until every online reader's counter is >= t (`_reclaim`). Why a token
        rather than counters readers bump and the writer snapshots: a reader that
        copied a token >= t has loaded the token store, which came after the unlinking,
        so all its later loads see the new tbl24 (TSO orders the writer's stores and
        the reader's loads), and its earlier batch loads precede its counter store (x86
        never moves a store before an older load). A bare bump has no such link: the
        reader could bump, then satisfy its next tbl24 load before the unlinking store
        reaches it. A counter of 0 means offline; going online races with the "nobody
        is online" check below (store-then-load on both sides, Dekker style), so both
        sides issue a full fence there (`_full_fence`)."""
        if not groups:
            return
        # the tbl24 stores must be visible before we read the reader slots (Dekker
        # with a reader coming online, see register_reader)
        _full_fence()
        if not self._readers[:, 0].any():
            self._free.extend(groups)
            return
        t = int(self._token[0]) + 1
        self._token[0] = t  # after the unlinking stores (TSO): a reader holding t saw them
        self._deferred.append((t, groups))

    def reclaim(self) -> None:
        """Free the deferred groups whose grace period has ended, without waiting
        (the writer's thread, now and then: what `stats` shows from another thread)."""
        self._reclaim(0.0)

    def _reclaim(self, timeout: float, need: int = 1) -> None:
        """Move deferred groups whose grace period has ended to the free list, waiting
        up to `timeout` seconds until at least `need` groups are free."""
        deadline = time.monotonic() + timeout
        while self._deferred:
            _full_fence()  # our token store before our loads of the reader slots
            slots = self._readers[:, 0]
            online = slots[slots != 0]
            seen = int(online.min()) if online.size else 1 << 64
            while self._deferred and self._deferred[0][0] <= seen:
                self._free.extend(self._deferred.popleft()[1])
            if len(self._free) >= need or time.monotonic() >= deadline:
                return
            time.sleep(20e-6)

    # ------------------------------------------------------------------ bulk load

    def bulk_load(
        self, routes: Iterable[tuple[int, int, int]] | tuple[np.ndarray, np.ndarray, np.ndarray]
    ) -> None:
        """Add many routes at once (replacing existing ones with the same prefix).

        `routes` is an iterable of (prefix, len, nh) or a tuple of three arrays.  The
        whole table is rebuilt privately from the route dict with numpy range fills,
        then published by rewriting only the entries that differ, under the same
        rules as single updates (new groups filled before they are linked, released
        groups reclaimed after a grace period), so readers may run meanwhile.  On
        Tbl8Exhausted or ValueError nothing changes."""
        self._check_open()
        p, plen, nh = _route_arrays(routes)
        if self._k is not None:
            self._bulk_load_compiled(p, plen, nh)
            return
        keys = (p.astype(np.int64) << 6 | plen.astype(np.int64)).tolist()
        new = dict(zip(keys, nh.tolist(), strict=True))
        if self._routes or len(new) != len(p):
            merged = {**self._routes, **new}
            n = len(merged)
            flat = np.fromiter(merged, dtype=np.int64, count=n)
            p = (flat >> 6).astype(np.uint32)
            plen = (flat & 63).astype(np.uint8)
            nh = np.fromiter(merged.values(), dtype=np.uint32, count=n)
        else:
            merged = new
        build = _build if self._k is None else self._k.build
        v24, d24, keys, rows, drows = build(p, plen, nh)
        self._publish(v24, d24, keys, rows, drows)
        self._routes = merged
        self._len_count = np.bincount(plen, minlength=33).tolist()
        self._recount()
        self._gen[0] += 1

    def _bulk_load_compiled(self, p: np.ndarray, plen: np.ndarray, nh: np.ndarray) -> None:
        k = self._k
        had = int(self._counts[k.TOTAL])
        # a new route set (the current one stays until the publication is done)
        rt, counts = k.routes_with(self._rt, p, plen, nh, _rows_for(had + p.size))
        if had or int(counts[k.TOTAL]) != p.size:  # old routes, or a prefix given twice
            p, plen, nh = k.route_items(rt)
        self._publish(*k.build(p, plen, nh))
        self._rt, self._counts = rt, counts
        self._gen[0] += 1

    def _publish(
        self,
        v24: np.ndarray,
        d24: np.ndarray,
        keys: np.ndarray,
        rows: np.ndarray,
        drows: np.ndarray,
    ) -> None:
        kept = self._tbl24[keys] >= _EXT_U32  # /24s that have a group keep it
        self._reserve(int(np.count_nonzero(~kept)))
        # nothing below can fail: from here on only stores
        new_g = np.array([self._free.pop() for _ in range(len(keys) - int(kept.sum()))],
                         dtype=np.int64)  # fmt: skip
        if self._k is not None:
            gone = self._k.publish(
                self._tbl24, self._tbl8, self._d8, self._groups, v24, keys, rows, drows, new_g
            )
        else:
            gone = self._publish_numpy(v24, keys, rows, drows, kept, new_g)
        self._d24 = d24
        self._release(gone.tolist())

    def _publish_numpy(
        self,
        v24: np.ndarray,
        keys: np.ndarray,
        rows: np.ndarray,
        drows: np.ndarray,
        kept: np.ndarray,
        new_g: np.ndarray,
    ) -> np.ndarray:
        """The stores of _publish; returns the groups nothing points at any more."""
        cur = self._tbl24
        old_keys = np.flatnonzero(cur >= _EXT_U32)
        old_groups = self._groups_of(cur[old_keys])
        # 1) groups that stay: rewrite the entries that differ, one store each
        kept_keys = keys[kept]
        kept_g = self._groups_of(cur[kept_keys])
        r, c = np.nonzero(self._tbl8_2d[kept_g] != rows[kept])
        self._tbl8_2d[kept_g[r], c] = rows[kept][r, c]
        self._d8_2d[kept_g] = drows[kept]
        # 2) new groups: filled completely before any tbl24 entry points at them
        new_keys = keys[~kept]
        self._tbl8_2d[new_g] = rows[~kept]
        self._d8_2d[new_g] = drows[~kept]
        # 3) tbl24: one store per entry that changes
        v24[kept_keys] = ((kept_g - self._groups) << 8).astype(np.int32).view(np.uint32)
        v24[new_keys] = ((new_g - self._groups) << 8).astype(np.int32).view(np.uint32)
        diff = np.flatnonzero(v24 != cur)
        cur[diff] = v24[diff]
        # 4) groups nothing points at any more
        return old_groups[~np.isin(old_keys, keys, assume_unique=True)]


def _route_arrays(
    routes: Iterable[tuple[int, int, int]] | tuple[np.ndarray, np.ndarray, np.ndarray],
    deletes: bool = False,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Validated (prefix uint32, len uint8, nh uint32) arrays; with `deletes`, nh 0
    (a delete, for `apply`) is valid too."""
    if (
        isinstance(routes, tuple)
        and len(routes) == 3
        and all(isinstance(x, np.ndarray) for x in routes)
    ):
        p, plen, nh = (np.asarray(x, dtype=np.int64).reshape(-1) for x in routes)
        if not len(p) == len(plen) == len(nh):
            raise ValueError("prefix, length and next-hop arrays differ in length")
    else:
        arr = np.array(list(routes), dtype=np.int64).reshape(-1, 3)
        p, plen, nh = arr[:, 0], arr[:, 1], arr[:, 2]
    bad = (plen < 0) | (plen > 32) | (p < 0) | (p > 0xFFFF_FFFF) | (nh < (0 if deletes else 1))
    bad |= nh > MAX_NH
    bad |= (p & (0xFFFF_FFFF >> np.clip(plen, 0, 32))) != 0  # host bits set
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(
            f"route #{i} (prefix {int(p[i]):#x}, len {int(plen[i])}, nh {int(nh[i])}) is invalid:"
            f" needs len 0..32, no host bits, nh {0 if deletes else 1}..{MAX_NH}"
        )
    return p.astype(np.uint32), plen.astype(np.uint8), nh.astype(np.uint32)


# the compiled route set's smallest size (rows; it doubles as it fills)
_MIN_ROUTE_ROWS = 64
_NO_ROUTES = (np.empty(0, np.uint32), np.empty(0, np.uint8), np.empty(0, np.uint32))


def _rows_for(n: int) -> int:
    """Rows of a compiled route set for n routes: a power of two, at most half full."""
    return max(_MIN_ROUTE_ROWS, 1 << (2 * n - 1).bit_length())


# fill ranges with one fancy assignment while a length's index matrix stays this small
_CHUNK = 1 << 20


def _build(
    p: np.ndarray, plen: np.ndarray, nh: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Build the table privately from unique routes: painting shorter prefixes first
    lets longer ones overwrite them, which is longest-prefix match.

    Returns (tbl24 values, tbl24 depths, sorted /24 keys that need a group, their
    256-entry rows, their depths); tbl24 values at the keys are still the plain ones."""
    v24 = np.zeros(TBL24_SIZE, dtype=np.uint32)
    d24 = np.zeros(TBL24_SIZE, dtype=np.uint8)
    order = np.argsort(plen, kind="stable")
    p, plen, nh = p[order], plen[order], nh[order]
    bounds = np.searchsorted(plen, np.arange(34))
    for length in range(25):
        s = slice(bounds[length], bounds[length + 1])
        if s.start == s.stop:
            continue
        starts = (p[s] >> 8).astype(np.intp)
        vals = nh[s]
        span = 1 << (24 - length)
        if span >= 64:
            # few routes, long ranges: slice fills (same-length prefixes are disjoint)
            for st, val in zip(starts.tolist(), vals.tolist(), strict=True):
                v24[st : st + span] = val
                d24[st : st + span] = length
            continue
        step = max(1, _CHUNK // span)
        offs = np.arange(span, dtype=np.intp)
        for k in range(0, len(starts), step):
            idx = (starts[k : k + step, None] + offs).reshape(-1)
            v24[idx] = np.repeat(vals[k : k + step], span)
            d24[idx] = length
    long_ = slice(bounds[25], bounds[33])
    keys, inv = np.unique(p[long_] >> 8, return_inverse=True)
    keys = keys.astype(np.intp)
    rows = np.repeat(v24[keys][:, None], GROUP_SIZE, axis=1)
    drows = np.repeat(d24[keys][:, None], GROUP_SIZE, axis=1)
    for length in range(25, 33):
        s = slice(bounds[length] - bounds[25], bounds[length + 1] - bounds[25])
        if s.start == s.stop:
            continue
        r = inv[s][:, None]
        span = 1 << (32 - length)
        c = (p[long_][s] & 0xFF).astype(np.intp)[:, None] + np.arange(span, dtype=np.intp)
        rows[r, c] = nh[long_][s][:, None]
        drows[r, c] = length
    return v24, d24, keys, rows, drows
