"""Data-plane taps for the operator's tools: `fwd trace` and `fwd capture`, as the
workers run them and as the control process arms and collects them."""
