"""`python -m engine.io.dpdk build [--force]`: compile the DPDK binding ahead of use."""

from __future__ import annotations

import argparse
import sys

from engine.io.dpdk._build import DpdkUnavailable, build, cache_root


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m engine.io.dpdk")
    sub = ap.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="compile the cffi module into the per-user cache")
    b.add_argument("--force", action="store_true", help="rebuild even if already built")
    b.add_argument("--verbose", action="store_true", help="show the compiler's output")
    sub.add_parser("where", help="print the cache directory")
    args = ap.parse_args(argv)
    if args.cmd == "where":
        print(cache_root())
        return 0
    try:
        print(build(force=args.force, verbose=args.verbose))
    except DpdkUnavailable as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
