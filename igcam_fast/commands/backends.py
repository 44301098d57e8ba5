"""Which backend runs each fused op on a device, and why the others cannot."""

from __future__ import annotations

import argparse

from igcam_fast.commands.common import parse_device

NAME = "backends"
HELP = "which backend runs the fused ops, and why"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="cpu",
                        help="the device to ask about: cpu, cuda or cuda:N (default cpu); asking about cuda on a "
                             "machine without a GPU is allowed and says why nothing can run there")


def run(args) -> None:
    from igcam_fast.ops import explain_backends

    # need_gpu=False: "why can't cuda run here?" is the question this command answers.
    print(explain_backends(str(parse_device(args.device, need_gpu=False))))
