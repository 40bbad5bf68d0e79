"""`python -m engine.cli`: the `fwd` command."""

from engine.cli.main import main

main()
