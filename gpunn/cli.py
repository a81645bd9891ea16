"""The ``gpunn`` command line: ``gpunn info`` (more commands arrive with the Trainer and bench).

Errors print one line and exit with status 2; no traceback for a user's mistake.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from .backend import DeviceUnavailableError
from .sysinfo import format_info, system_info


def _info(args: argparse.Namespace) -> int:
    info = system_info()
    print(json.dumps(info, indent=2) if args.json else format_info(info))
    return 1 if info["device_error"] else 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gpunn", description="Neural networks on the GPU (CuPy) or the CPU (NumPy).")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    info = commands.add_parser("info", help="devices, why the CPU was chosen, library versions, BLAS, GPUs")
    info.add_argument("--json", action="store_true", help="print one JSON object")
    info.set_defaults(run=_info)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except (ValueError, TypeError, DeviceUnavailableError, OSError) as exc:
        print(f"gpunn {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
