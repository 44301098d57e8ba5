"""The repository's benchmark suite of igcam_fast: cost over Grad-CAM and the forward-only floor,
images per second, the comparators, accuracy per cost, where the time goes, the kernels, and the
targets judged from the numbers. Built on igcam_fast.benchmarking.timing and igcam_fast.benchmarking.latency, the same
primitives and providers as the installed ``igcam-fast bench`` command.

    python -m bench.run --preset quick|full|gpu [--out bench/results] [--dry]
    python -m pytest bench/test_ops_bench.py          # pytest-benchmark micro-benchmarks of the ops
    OUT=folder bash bench/gpu_check.sh tests|bench    # on a machine with an NVIDIA GPU

    presets.py    what each preset runs (data)          sections/   one module per section
    common.py     recorder, loading, safe timing         targets.py  the targets table and its judge
    comparators.py  the other libraries and procedures   report.py   the markdown
    op_cases.py   the ops at one shape, with bytes moved run.py      the driver
"""
