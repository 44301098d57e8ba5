"""The ``igcam-fast`` command (also ``python -m igcam_fast``): one sub-command per module."""

from __future__ import annotations

import argparse
import importlib
import sys

from igcam_fast.commands import CommandError

#: The sub-commands, in the order ``igcam-fast --help`` lists them: modules of this package.
COMMANDS = ("demo", "explain", "evaluate", "evaluate_synthetic", "evaluate_photos", "bench", "backends")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="igcam-fast", description="Fast Integrated Grad-CAM.")
    subparsers = parser.add_subparsers(dest="command", required=True)
    for module_name in COMMANDS:
        command = importlib.import_module(f"igcam_fast.commands.{module_name}")
        sub = subparsers.add_parser(command.NAME, help=command.HELP, description=command.__doc__,
                                    formatter_class=argparse.RawDescriptionHelpFormatter)
        command.add_arguments(sub)
        sub.set_defaults(run=command.run)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.run(args)
    except CommandError as err:
        print(f"igcam-fast {args.command}: error: {err}", file=sys.stderr, flush=True)
        raise SystemExit(2) from None
    return 0


if __name__ == "__main__":
    sys.exit(main())
