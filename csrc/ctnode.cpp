// Python module detector.ops._C: importing it registers the ctnode operators with torch.
#include <Python.h>

PyMODINIT_FUNC PyInit__C(void) {
  static PyModuleDef module = {
      PyModuleDef_HEAD_INIT,
      "_C",
      "ctnode's C++/CUDA operators, reached through torch.ops.ctnode.",
      -1,
      nullptr,
  };
  return PyModule_Create(&module);
}
