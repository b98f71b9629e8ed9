"""The `mccp-bridge` command line."""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mccp-bridge", description="WebRTC-to-SIP media bridge")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("serve", help="start the bridge")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    print(f"{args.command}: not built yet", file=sys.stderr)
    return 1
