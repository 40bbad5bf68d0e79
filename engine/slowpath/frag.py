"""IPv4 fragmentation for the slow path: the kernel's `ip_do_fragment` slow path
(`ip_frag_init`/`ip_frag_next`, net/ipv4/ip_output.c) and `ip_options_fragment`
(net/ipv4/ip_options.c), over bytes, one packet per call.

What the kernel does, and so what `fragment` does:
- every fragment repeats the header; payload per fragment is `(mtu - ihl*4) & ~7`
  except the last, which takes what is left (`ip_frag_next`: `len &= ~7` unless it
  is the remainder);
- offsets continue from the original's offset (refragmenting a fragment), MF is set
  on every fragment but the last, and on the last too when the original had MF;
- the fragment field is rewritten from scratch (`iph->frag_off = htons(offset >> 3)`):
  DF and the reserved bit of the original are dropped, DF is set only when the caller
  asks (the kernel's IPSKB_FRAG_PMTU case: a datagram reassembled from DF fragments
  is refragmented with DF kept);
- the first fragment keeps every option; later ones carry the header as rewritten by
  `ip_options_fragment` (options without the copied flag overwritten with NOPs, same
  header length: KERNEL-NOTES "Fragmenting with options"). The kernel does that
  only when the original's offset is 0: a non-first fragment's options were already
  reduced by whoever fragmented it first;
- ID, TOS, TTL, protocol and addresses are copied; tot_len and the header checksum
  are set per fragment (`ip_send_check`).
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Sequence

import numpy as np

from engine.pipeline import checksum
from engine.pipeline.checksum import HEADER_WORDS, fold16
from engine.proto import IP_DF, IP_MF, IP_OFFSET
from engine.slowpath.options import fragment_options

IP_CE = 0x8000  # the reserved "evil" bit; the kernel calls it IP_CE
MAX_OFFSET = IP_OFFSET << 3  # 65,528: the largest offset the 13-bit field can say

_U16 = struct.Struct("!H")


def ip_options_fragment(header: bytes) -> bytes:
    """The header non-first fragments carry (the kernel's `ip_options_fragment`).

    Walks the options as the kernel does: EOL ends the walk, NOP is one byte, every
    other option is type/length/data; options without the copied flag are replaced by
    NOPs of the same length, so the header length does not change. A malformed length
    stops the walk and leaves the rest as it is (the kernel returns on
    `optlen < 2 || optlen > l`). The checksum is left for the caller to recompute.
    """
    end = (header[0] & 0x0F) << 2
    return bytes(header[:20]) + fragment_options(bytes(header[20:end])) + bytes(header[end:])


def fragment(
    ip_packet: bytes | bytearray | memoryview,
    mtu: int,
    *,
    fragment_options: Callable[[bytes], bytes] | None = None,
    keep_df: bool = False,
    geometry: Sequence[int] | None = None,
) -> list[bytes]:
    """Split an IPv4 packet into fragments of at most `mtu` bytes (`ip_do_fragment`).

    `ip_packet` starts at the IP header; bytes past its tot_len (L2 padding) are
    ignored. A packet that already fits is returned unchanged as the only element
    (unless `geometry` is given). DF on the input is not checked here: the caller
    decides (ICMP fragmentation needed) before calling, as `ip_fragment` does before
    `ip_do_fragment`.

    `fragment_options(header) -> header` gives the header of non-first fragments
    (default: `ip_options_fragment` above); it gets the first header with tot_len,
    the fragment field and the checksum zeroed, and must keep its length.
    `keep_df` sets DF on every fragment (IPSKB_FRAG_PMTU, see module docstring).

    `geometry`: the payload sizes of the fragments a datagram was reassembled from,
    in offset order (`Result.sizes` of the reassembler). A reassembled skb keeps its
    fragments in a frag_list, and `ip_do_fragment`'s fast path sends them as they
    were when they still fit: each payload at most `mtu - ihl*4`, all but the last a
    multiple of 8, and the packet not itself a fragment. Then the output follows the
    original boundaries, always (even when the whole would fit the MTU: the kernel
    refragments a reassembled datagram whenever IPCB(skb)->frag_max_size is set), and
    DF is cleared (`ip_fraglist_init` writes MF alone), whatever `keep_df` says. When
    they do not fit, the slow path below splits at the MTU as usual.

    Raises ValueError for a malformed header, an MTU that cannot carry the header
    plus 8 bytes of payload, or offsets past what the 13-bit field can hold.
    """
    n = len(ip_packet)
    if n < 20:
        raise ValueError("packet shorter than an IPv4 header")
    ver_ihl = ip_packet[0]
    ihl = (ver_ihl & 0x0F) << 2
    tot_len = (ip_packet[2] << 8) | ip_packet[3]
    if ver_ihl >> 4 != 4 or ihl < 20 or tot_len < ihl or tot_len > n:
        raise ValueError("malformed IPv4 header")
    left = tot_len - ihl
    room = mtu - ihl
    frag_off = (ip_packet[6] << 8) | ip_packet[7]
    sizes: Sequence[int] | None = None
    if geometry is not None and not frag_off & (IP_MF | IP_OFFSET) and len(geometry) > 1:
        if (
            sum(geometry) == left
            and all(0 < sz <= room and not sz & 7 for sz in geometry[:-1])
            and 0 < geometry[-1] <= room
        ):
            sizes = geometry  # the frag_list fast path
            keep_df = False
    if sizes is None:
        if tot_len <= mtu:
            return [bytes(ip_packet[:tot_len])]
        if room < 8:
            raise ValueError(f"MTU {mtu} cannot carry a {ihl}-byte header and 8 bytes of payload")
        step = room & ~7
        sizes = [step] * ((left - 1) // step)
        sizes.append(left - step * len(sizes))

    base = (frag_off & IP_OFFSET) << 3
    if base + left - sizes[-1] > MAX_OFFSET:
        raise ValueError("fragment offset would overflow the 13-bit field")
    more = frag_off & IP_MF  # refragmenting a non-last fragment: its last piece keeps MF
    df = IP_DF if keep_df else 0

    first = bytearray(ip_packet[:ihl])
    first[2:4] = first[6:8] = first[10:12] = b"\0\0"
    if base == 0 and ihl > 20:
        # Options are reduced once, on the first fragmentation (ip_frag_next's
        # "first_frag" trick): the original's offset is 0.
        opts = fragment_options or ip_options_fragment
        later = bytearray(opts(bytes(first)))
        if len(later) != ihl:
            raise ValueError("fragment_options changed the header length")
        later[2:4] = later[6:8] = later[10:12] = b"\0\0"
    else:
        later = first
    # Header sums without tot_len/frag_off/check: each fragment adds its own two
    # words, so a header's checksum costs no re-summing of the header.
    sum_first = sum(HEADER_WORDS[ihl >> 2].unpack(first))
    sum_later = sum_first if later is first else sum(HEADER_WORDS[ihl >> 2].unpack(later))
    head_first = bytes(first[:2])
    mid_first = bytes(first[4:6])
    ttlp_first = bytes(first[8:10])
    addr_first = bytes(first[12:])
    head_later = bytes(later[:2])
    mid_later = bytes(later[4:6])
    ttlp_later = bytes(later[8:10])
    addr_later = bytes(later[12:])

    data = memoryview(ip_packet)
    pack = _U16.pack
    out: list[bytes] = []
    ptr = ihl
    offset = base
    for size in sizes:
        left -= size
        fo = (offset >> 3) | df
        if left > 0 or more:
            fo |= IP_MF
        length = size + ihl
        if ptr == ihl:
            total, h0, h4, h8, h12 = sum_first, head_first, mid_first, ttlp_first, addr_first
        else:
            total, h0, h4, h8, h12 = sum_later, head_later, mid_later, ttlp_later, addr_later
        check = ~fold16(total + length + fo) & 0xFFFF
        out.append(
            b"".join((h0, pack(length), h4, pack(fo), h8, pack(check), h12, data[ptr : ptr + size]))
        )
        ptr += size
        offset += size
    return out


def fraglist_headers(datagram_hdr: np.ndarray, datagram: np.ndarray, tot_len: np.ndarray,
                     frag_off: np.ndarray) -> np.ndarray:
    """The headers of fragments sent as they came (`ip_do_fragment`'s frag_list fast
    path, `ip_fraglist_init`/`ip_fraglist_prepare`), for many datagrams at once.

    `datagram_hdr`: (G, 20) uint8, each datagram's header as it leaves (IHL 5: the
    fast path is for datagrams without options); `datagram`: the datagram of each
    fragment; `tot_len`, `frag_off`: each fragment's as received. Each fragment gets
    its datagram's header with its own length and offset, MF as received (set on all
    but the last), DF and the reserved bit cleared (the kernel writes the field from
    the offset and MF alone) and the checksum recomputed. Returns (F, 20) uint8.
    """
    hdr = datagram_hdr[datagram]
    hdr[:, 2] = tot_len >> 8
    hdr[:, 3] = tot_len & 0xFF
    fo = frag_off & (IP_MF | IP_OFFSET)
    hdr[:, 6] = fo >> 8
    hdr[:, 7] = fo & 0xFF
    hdr[:, 10:12] = 0
    check = checksum.compute(hdr.view(">u2"))
    hdr[:, 10] = check >> 8
    hdr[:, 11] = check & 0xFF
    return hdr
