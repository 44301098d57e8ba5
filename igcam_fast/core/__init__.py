"""The method: the engine and its methods, the float64 reference, quadrature, targets, the
baseline and its features, and the model's preprocessing. Depends on :mod:`igcam_fast.ops` only."""
