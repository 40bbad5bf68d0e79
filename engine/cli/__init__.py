"""The `fwd` command: click commands, the control-socket client, and the operator's
views (watch, trace and capture printing, the lab, the benchmark suite)."""

from engine.cli.main import main

__all__ = ["main"]
