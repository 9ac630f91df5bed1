// Python entry point of hapvr._C_cuda: loading it registers the CUDA kernels of the ops whose
// schemas hapvr._C defines (import hapvr._C first).
#include <Python.h>

extern "C" {
PyMODINIT_FUNC PyInit__C_cuda(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C_cuda", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
}
