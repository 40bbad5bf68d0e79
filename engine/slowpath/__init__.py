"""The slow path, one packet at a time over bytes, as the kernel's net/ipv4 files:
the per-packet kernel functions (kernel.py) and their routing (route_cache.py),
output (output.py) and frag_list shortcut (whole.py); ARP and neighbour resolution,
ICMP, IP options, fragmentation, reassembly. The worker process around it is
engine/workers/slowpath.py."""
