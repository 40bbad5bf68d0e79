"""The control process: supervision, the FIB and next-hop writer, the control socket,
counters read out of shared memory, metrics."""
