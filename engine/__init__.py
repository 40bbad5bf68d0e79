"""fwd: a multiprocess, vectorised IPv4 forwarding engine."""

__version__ = "0.1.0"
