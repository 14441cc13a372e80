// The Python module ffavatar_kernels._C. It holds no Python functions: importing it loads this
// shared library, whose static TORCH_LIBRARY initializers register every op in torch.ops.ffavatar.
#include <Python.h>

static struct PyModuleDef ffavatar_module = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};

PyMODINIT_FUNC PyInit__C(void) { return PyModule_Create(&ffavatar_module); }
