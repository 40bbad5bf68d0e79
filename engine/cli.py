"""The `fwd` command."""

from __future__ import annotations

import json
import sys

import click

from engine import __version__
from engine.config import Config, ConfigError, format_config_error, load_config

EXIT_CONFIG = 2


def _load_or_exit(path: str) -> Config:
    try:
        return load_config(path)
    except ConfigError as err:
        click.echo(format_config_error(path, err), err=True)
        sys.exit(EXIT_CONFIG)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="fwd")
def main() -> None:
    """fwd: a multiprocess, vectorised IPv4 forwarding engine.

    Run a deployment described by a TOML config (see configs/default.toml).
    """


@main.command()
@click.argument("config", type=click.Path(dir_okay=False))
def check(config: str) -> None:
    """Validate CONFIG; exit 2 with a message naming the key if it is bad."""
    cfg = _load_or_exit(config)
    click.echo(f"{config}: ok ({len(cfg.ports)} ports, {len(cfg.routes)} routes, "
               f"{cfg.engine.workers} workers)")


@main.command()
@click.argument("config", type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print the counters as JSON.")
def run(config: str, as_json: bool) -> None:
    """Run the deployment in CONFIG.

    With pcap ports: forward every input frame, write every port's output capture,
    print the counters and exit.
    """
    from engine.io.pcap import PcapError
    from engine.stats import format_snapshot
    from engine.supervisor import EngineError
    from engine.supervisor import run as run_engine

    cfg = _load_or_exit(config)
    try:
        result = run_engine(cfg)
    except PcapError as err:
        click.echo(f"fwd: {err}", err=True)
        sys.exit(EXIT_CONFIG)
    except EngineError as err:
        click.echo(f"fwd: {err}", err=True)
        sys.exit(1)
    if as_json:
        click.echo(json.dumps(result.stats.as_dict(), indent=2))
    else:
        click.echo(format_snapshot(result.stats))
    if not result.stats.balanced:
        click.echo("fwd: counters do not balance: a frame was lost or counted twice", err=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
