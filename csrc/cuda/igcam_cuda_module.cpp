// The igcam_fast._C_cuda module: loading it registers the CUDA kernels (TORCH_LIBRARY_IMPL in
// igcam_kernels.cu). Import igcam_fast._C first, which defines the schemas.
//
// It also answers two questions dispatch asks before it picks the CUDA kernels for a device:
//   built_architectures()      the architectures compiled in, as setup.py recorded them:
//                              a list of "sm_XY" (machine code) and "compute_XY" (PTX) strings
//   probe_kernel_image(device) (code, message): code 0 when a kernel image (or JIT-able PTX)
//                              exists for that device, else the CUDA error
#include <Python.h>

// setup.py passes the architectures as comma-separated integers (80,90); empty when unknown.
#ifndef IGCAM_FAST_SM_ARCHS
#define IGCAM_FAST_SM_ARCHS
#endif
#ifndef IGCAM_FAST_PTX_ARCHS
#define IGCAM_FAST_PTX_ARCHS
#endif

namespace igcam_fast {
int probe_kernel_image(int device);
const char* cuda_error_name(int code);
}  // namespace igcam_fast

namespace {

// A leading 0 keeps the arrays valid when a list is empty; it is skipped below.
const int kSmArchs[] = {0, IGCAM_FAST_SM_ARCHS};
const int kPtxArchs[] = {0, IGCAM_FAST_PTX_ARCHS};

bool append_archs(PyObject* list, const char* prefix, const int* archs, size_t count) {
  for (size_t i = 1; i < count; ++i) {
    PyObject* name = PyUnicode_FromFormat("%s_%d", prefix, archs[i]);
    if (name == nullptr || PyList_Append(list, name) != 0) {
      Py_XDECREF(name);
      return false;
    }
    Py_DECREF(name);
  }
  return true;
}

PyObject* built_architectures(PyObject*, PyObject*) {
  PyObject* list = PyList_New(0);
  if (list == nullptr) return nullptr;
  if (!append_archs(list, "sm", kSmArchs, sizeof(kSmArchs) / sizeof(int)) ||
      !append_archs(list, "compute", kPtxArchs, sizeof(kPtxArchs) / sizeof(int))) {
    Py_DECREF(list);
    return nullptr;
  }
  return list;
}

PyObject* probe_kernel_image(PyObject*, PyObject* arg) {
  const long device = PyLong_AsLong(arg);
  if (device == -1 && PyErr_Occurred()) return nullptr;
  int code = 0;
  Py_BEGIN_ALLOW_THREADS
  code = igcam_fast::probe_kernel_image(static_cast<int>(device));
  Py_END_ALLOW_THREADS
  return Py_BuildValue("(is)", code, igcam_fast::cuda_error_name(code));
}

PyMethodDef kMethods[] = {
    {"built_architectures", built_architectures, METH_NOARGS,
     "The CUDA architectures compiled in: 'sm_XY' (machine code) and 'compute_XY' (PTX)."},
    {"probe_kernel_image", probe_kernel_image, METH_O,
     "(code, message) for a device index: code 0 when the kernels have an image for it."},
    {nullptr, nullptr, 0, nullptr},
};

}  // namespace

extern "C" PyObject* PyInit__C_cuda(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C_cuda", nullptr, -1, kMethods};
  return PyModule_Create(&module_def);
}
