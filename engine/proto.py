"""Wire constants, defined once: Ethernet, ARP and IPv4 numbers as the headers carry
them (the kernel's include/uapi/linux/if_ether.h, in.h, ip.h), and the width of the
header row the data plane reads."""

from __future__ import annotations

ETH_ALEN = 6  # octets in an Ethernet address
ETH_HLEN = 14  # destination, source, ethertype
ETH_BROADCAST = b"\xff" * ETH_ALEN
ETH_P_ALL = 0x0003  # every protocol (packet sockets)
ETH_P_IP = 0x0800
ETH_P_ARP = 0x0806
# the same ethertypes as they go on the wire, and as a little-endian 16-bit load reads them
ETH_TYPE_IP = ETH_P_IP.to_bytes(2, "big")
ETH_TYPE_ARP = ETH_P_ARP.to_bytes(2, "big")
ETH_P_IP_LE = int.from_bytes(ETH_TYPE_IP, "little")
ETH_P_ARP_LE = int.from_bytes(ETH_TYPE_ARP, "little")
MAC48 = 0xFFFF_FFFF_FFFF  # the 48 bits of a MAC held in a uint64

IPHDR_LEN = 20  # sizeof(struct iphdr): an IPv4 header without options
IP_DF = 0x4000  # frag_off flags and offset mask (ip.h)
IP_MF = 0x2000
IP_OFFSET = 0x1FFF

IPPROTO_ICMP = 1
IPPROTO_IGMP = 2
IPPROTO_TCP = 6
IPPROTO_UDP = 17

# the data plane's header row: Ethernet plus the longest IPv4 header (60), padded to
# 8-byte words; stages and taps read these bytes of every frame
HDR_BYTES = 80
