"""What ``igcam-fast bench`` and the repository's benchmark suite (bench/) time through: interleaved
repeats with medians and IQR on a synchronised device (timing.py), and the settings, providers and
forward-only floor of a side-by-side comparison of Grad-CAM and Integrated Grad-CAM (latency.py)."""
