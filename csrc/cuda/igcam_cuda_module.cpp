// The igcam_fast._C_cuda module: loading it registers the CUDA kernels (TORCH_LIBRARY_IMPL in
// igcam_kernels.cu). Import igcam_fast._C first, which defines the schemas.
#include <Python.h>

extern "C" PyObject* PyInit__C_cuda(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C_cuda", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
