"""Which backend runs each fused op on a device, and why the others cannot."""

from __future__ import annotations

import argparse

NAME = "backends"
HELP = "which backend runs the fused ops, and why"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="cpu", help="the device to ask about: cpu, cuda or cuda:N (default cpu)")


def run(args) -> None:
    from igcam_fast.ops import explain_backends

    print(explain_backends(args.device))
