// Python module shell of epic_kernels._C (setup.py build only). Importing it runs the static
// TORCH_LIBRARY registrations of this shared library; the ops are then torch.ops.epic_kernels.*.
// The CMake build leaves this file out and produces a library for torch.ops.load_library instead.
#include <Python.h>

PyMODINIT_FUNC PyInit__C(void) {
  static struct PyModuleDef module_def = {
      PyModuleDef_HEAD_INIT,
      "_C",
      "EPIC kernels; importing registers torch.ops.epic_kernels.*",
      -1,
      nullptr,
  };
  return PyModule_Create(&module_def);
}
