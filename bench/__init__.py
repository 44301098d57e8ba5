"""Benchmarks of igcam_fast: cost over Grad-CAM, images per second, accuracy per cost, kernels.

    python -m bench.run --preset quick|full|gpu [--out bench/results]
    python -m pytest bench/test_ops_bench.py          # pytest-benchmark micro-benchmarks of the ops
"""
