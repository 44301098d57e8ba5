// Schemas of the igcam_fast ops, written once; the kernels live in cpu/ and cuda/.
//
// All three ops are in out= form: the caller allocates `out` (igcam_fast.ops does) and the
// kernel writes every element of it. Semantics: igcam_fast/reference.py.
#include <Python.h>
#include <torch/library.h>

TORCH_LIBRARY(igcam_fast, m) {
  // out[b·m + t] = (baseline + alphas[t] (x[b] - baseline) - mean) / std, written in out's dtype and layout.
  m.def("path_images_out(Tensor x, Tensor baseline, Tensor alphas, Tensor? mean, Tensor? std, "
        "Tensor(a!) out) -> ()");
  // out[b] = Σ_t step_weights[t] ReLU?(Σ_k w[b·m+t, k] (activations[b·m+t, k] - baseline_features[(b), k])).
  m.def("combine_out(Tensor activations, Tensor? gradients, Tensor? channel_weights, "
        "Tensor? baseline_features, Tensor step_weights, int weight_mode, bool relu, Tensor(a!) out) -> ()");
  // Bilinear (align_corners=False) resize of (B, h, w) maps to out's (B, H, W), optionally min-max scaled.
  m.def("upsample_out(Tensor maps, bool normalize, Tensor(a!) out) -> ()");
}

// An importable Python module whose only job is to run the registrations above when loaded.
extern "C" PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
