"""The slow path's protocol code, one packet at a time over bytes, as the kernel's
net/ipv4 files: ARP and neighbour resolution, ICMP, IP options, fragmentation,
reassembly. The worker process around it is engine/workers/slowpath.py."""
