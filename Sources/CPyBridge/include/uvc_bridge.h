/* Public header of the CPython bridge target; the module's only export is PyInit__native. */
#ifndef UVC_BRIDGE_H
#define UVC_BRIDGE_H
#define PY_SSIZE_T_CLEAN
#define Py_LIMITED_API 0x030B0000
#include <Python.h>
PyMODINIT_FUNC PyInit__native(void);
#endif
