"""ECMP next-hop selection: stable per host pair, spread over the members."""

from __future__ import annotations

import numpy as np

from engine.pipeline.route import flow_hash, select_multipath
from engine.pipeline.tables import Tables


def tables_with_group(members: list[int]) -> Tables:
    n = 16
    nh_group = np.zeros(n, dtype=np.uint32)
    nh_group_n = np.zeros(n, dtype=np.uint8)
    nhg_members = np.zeros(n, dtype=np.uint32)
    nh_group[9], nh_group_n[9] = 2, len(members)
    nhg_members[2 : 2 + len(members)] = members
    zeros = np.zeros(n, dtype=np.uint8)
    return Tables(lookup=lambda a: a, nh_type=zeros, nh_flags=zeros, nh_port=zeros,
                  nh_mtu=zeros, nh_group=nh_group, nh_group_n=nh_group_n,
                  nhg_members=nhg_members, nh_mac48=zeros, port_mac48=zeros, port_mtu=zeros,
                  port_up=np.ones(1, bool), local_addrs=np.zeros(0, np.uint32))


def test_hash_is_31_bits_and_deterministic():
    rng = np.random.default_rng(1)
    s = rng.integers(0, 2**32, 10_000, dtype=np.uint64).astype(np.uint32)
    d = rng.integers(0, 2**32, 10_000, dtype=np.uint64).astype(np.uint32)
    h = flow_hash(s, d)
    assert h.max() < 2**31
    assert np.array_equal(h, flow_hash(s.copy(), d.copy()))
    assert not np.array_equal(h, flow_hash(d, s))  # direction matters, as in the kernel


def test_group_members_are_chosen_per_host_pair_and_evenly():
    t = tables_with_group([3, 4, 5])
    rng = np.random.default_rng(2)
    n = 30_000
    saddr = rng.integers(0, 2**32, n, dtype=np.uint64).astype(np.uint32)
    daddr = rng.integers(0, 2**32, n, dtype=np.uint64).astype(np.uint32)
    nh = np.full(n, 9, dtype=np.uint32)
    nh[::10] = 7  # not a group: left alone
    chosen = select_multipath(nh, saddr, daddr, t)
    assert np.all(chosen[::10] == 7)
    grouped = np.delete(chosen, np.arange(0, n, 10))
    counts = np.bincount(grouped, minlength=6)[3:6]
    assert set(np.unique(grouped)) == {3, 4, 5}
    assert counts.min() > 0.9 * counts.max()  # within 10 % of each other
    again = select_multipath(nh, saddr, daddr, t)
    assert np.array_equal(chosen, again)  # the same pair always takes the same member
    assert np.array_equal(nh[:3], [7, 9, 9])  # the input is not modified


def test_ecmp_route_end_to_end(tmp_path):
    """10.77.0.0/16 has two next hops (the gateway on p1, h3 on p2): each host pair
    always leaves by the same one, both are used, bytes are those of a normal forward."""
    from scapy.layers.inet import IP, UDP
    from scapy.layers.l2 import Ether
    from scapy.packet import Raw

    from conftest import MAC, Lab, routed

    frames = []
    for i in range(300):
        f = (Ether(src=MAC["h1"], dst=MAC["p0"])
             / IP(src=f"10.0.1.{2 + i % 5}", dst=f"10.77.{i % 7}.{i % 11}", id=i)
             / UDP(sport=1000 + i % 3, dport=53) / Raw(i.to_bytes(2, "big")))
        f.time = 50 + i / 1000
        frames.append(f)
    stats, out = Lab(tmp_path, workers=2, batch=16).run({"p0": frames})
    assert stats.forwarded == 300 and stats.balanced
    port_of = {}
    for port, nexthop in (("p1", "gw"), ("p2", "h3")):
        for f in out[port]:
            i = int.from_bytes(bytes(f[Raw])[:2], "big")
            assert bytes(f) == routed(frames[i], port, nexthop)
            pair = (f[IP].src, f[IP].dst)
            assert port_of.setdefault(pair, port) == port
    assert len(out["p1"]) + len(out["p2"]) == 300
    assert 0.25 < len(out["p1"]) / 300 < 0.75
