"""The ``igcam-fast`` command (also ``python -m igcam_fast``)."""

from __future__ import annotations

import argparse
import sys


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="igcam-fast", description="Fast Integrated Grad-CAM.")
    commands = parser.add_subparsers(dest="command", required=True)

    from . import demo

    demo_parser = commands.add_parser(
        "demo", help="explain photos with Grad-CAM and Integrated Grad-CAM side by side",
        description=demo.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    demo.add_arguments(demo_parser)
    demo_parser.set_defaults(run=demo.run)

    from . import explain_dataset

    explain_parser = commands.add_parser(
        "explain", help="explain a whole data set (resumable; torchrun for several GPUs or machines)",
        description=explain_dataset.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    explain_dataset.add_arguments(explain_parser)
    explain_parser.set_defaults(run=explain_dataset.run)

    from . import evaluate
    from .voc import benchmark

    evaluate_parser = commands.add_parser(
        "evaluate", help="EBPG, Bbox, Drop%% and Increase%% of the methods on a PASCAL VOC 2007 style folder",
        description=evaluate.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    evaluate.add_arguments(evaluate_parser)
    evaluate_parser.set_defaults(run=evaluate.run)
    synthetic_parser = commands.add_parser(
        "evaluate-synthetic", help="the evaluation benchmark on a generated VOC-layout data set and real photos",
        description=benchmark.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    benchmark.add_arguments(synthetic_parser)
    synthetic_parser.set_defaults(run=benchmark.run)

    backends = commands.add_parser("backends", help="which backend runs the fused ops, and why")
    backends.add_argument("--device", default="cpu")
    backends.set_defaults(run=_print_backends)
    return parser


def _print_backends(args) -> None:
    from .ops import explain_backends

    print(explain_backends(args.device))


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    args.run(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
