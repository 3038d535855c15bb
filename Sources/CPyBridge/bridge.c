/* CPython glue for the Swift core: argument and buffer checks, exception mapping.
 * No logic lives here: every function acquires its buffers, calls one Swift entry
 * point and maps its status to a Python exception. */
#include "uvc_bridge.h"
#include "UVCNative-Swift.h"
#include <string.h>

#define ERROR_CAPACITY 1024

typedef struct {
    const char *name;
    char kind;     /* 'd' float64, 'q' int64 */
    int writable;
} ArgSpec;

static Py_ssize_t no_shape[1] = {0};

/* Accepts native or little-endian 8-byte items of the wanted kind ('l' and 'q' are both int64 here). */
static int format_matches(const Py_buffer *view, char kind) {
    const char *f = view->format ? view->format : "B";
    if (*f == '@' || *f == '=' || *f == '<') f++;
    if (f[0] == '\0' || f[1] != '\0' || view->itemsize != 8) return 0;
    if (kind == 'd') return f[0] == 'd';
    return f[0] == 'q' || f[0] == 'l';
}

static int acquire(const char *fn, PyObject *obj, const ArgSpec *spec, Py_buffer *view) {
    if (PyObject_GetBuffer(obj, view, PyBUF_RECORDS_RO) != 0) {
        PyErr_Clear();
        PyObject *type_name = PyType_GetName(Py_TYPE(obj));
        PyErr_Format(PyExc_TypeError, "%s(): argument '%s' must be a numpy array (%s), got %S",
                     fn, spec->name, spec->kind == 'd' ? "float64" : "int64", type_name);
        Py_XDECREF(type_name);
        return -1;
    }
    const char *why = NULL;
    PyObject *type = PyExc_ValueError;
    if (!format_matches(view, spec->kind)) {
        why = spec->kind == 'd' ? "must have dtype float64" : "must have dtype int64";
        type = PyExc_TypeError;
    } else if (!PyBuffer_IsContiguous(view, 'C')) {
        why = "must be C-contiguous (use numpy.ascontiguousarray)";
    } else if (spec->writable && view->readonly) {
        why = "must be writable";
    }
    if (why) {
        PyErr_Format(type, "%s(): argument '%s' %s", fn, spec->name, why);
        PyBuffer_Release(view);
        return -1;
    }
    return 0;
}

static int overlaps(const Py_buffer *a, const Py_buffer *b) {
    const char *a0 = a->buf, *b0 = b->buf;
    return a->len > 0 && b->len > 0 && a0 < b0 + b->len && b0 < a0 + a->len;
}

/* Acquires every argument or none; outputs must not share memory with any other argument. */
static int acquire_all(const char *fn, PyObject *const *args, Py_ssize_t nargs,
                       const ArgSpec *specs, Py_ssize_t n, Py_buffer *views) {
    if (nargs != n) {
        PyErr_Format(PyExc_TypeError, "%s() takes %zd arguments, got %zd", fn, n, nargs);
        return -1;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        if (acquire(fn, args[i], &specs[i], &views[i]) != 0) {
            while (i-- > 0) PyBuffer_Release(&views[i]);
            return -1;
        }
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        if (!specs[i].writable) continue;
        for (Py_ssize_t j = 0; j < n; j++) {
            if (j != i && overlaps(&views[i], &views[j])) {
                PyErr_Format(PyExc_ValueError, "%s(): output '%s' shares memory with argument '%s'",
                             fn, specs[i].name, specs[j].name);
                for (Py_ssize_t k = 0; k < n; k++) PyBuffer_Release(&views[k]);
                return -1;
            }
        }
    }
    return 0;
}

static void release_all(Py_buffer *views, Py_ssize_t n) {
    for (Py_ssize_t i = 0; i < n; i++) PyBuffer_Release(&views[i]);
}

static const Py_ssize_t *shape_of(const Py_buffer *v) { return v->ndim ? v->shape : no_shape; }

static int raise_status(const char *fn, int status, const char *message) {
    if (status == 0) return 0;
    PyErr_Format(status == 2 ? PyExc_TypeError : PyExc_ValueError, "%s(): %s", fn, message);
    return -1;
}

#define ARG(v) (v).buf, shape_of(&(v)), (ptrdiff_t)(v).ndim

static PyObject *cost_exact(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    static const ArgSpec specs[] = {
        {"spec", 'q', 0}, {"convention", 'd', 0}, {"plan", 'q', 0},
        {"layers_out", 'd', 1}, {"globals_out", 'd', 1}};
    enum { N = sizeof specs / sizeof specs[0] };
    Py_buffer v[N];
    if (acquire_all("cost_exact", args, nargs, specs, N, v) != 0) return NULL;
    char message[ERROR_CAPACITY];
    double total = 0;
    int status = uvc_cost_exact(ARG(v[0]), ARG(v[1]), ARG(v[2]), ARG(v[3]), ARG(v[4]),
                                &total, message, ERROR_CAPACITY);
    release_all(v, N);
    if (raise_status("cost_exact", status, message) != 0) return NULL;
    return PyFloat_FromDouble(total);
}

static PyObject *cost_expected(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    static const ArgSpec specs[] = {
        {"spec", 'q', 0}, {"convention", 'd', 0}, {"x", 'd', 0}, {"out", 'd', 1}};
    enum { N = sizeof specs / sizeof specs[0] };
    Py_buffer v[N];
    if (acquire_all("cost_expected", args, nargs, specs, N, v) != 0) return NULL;
    char message[ERROR_CAPACITY];
    double total = 0;
    int status = uvc_cost_expected(ARG(v[0]), ARG(v[1]), ARG(v[2]), ARG(v[3]),
                                   &total, message, ERROR_CAPACITY);
    release_all(v, N);
    if (raise_status("cost_expected", status, message) != 0) return NULL;
    return PyFloat_FromDouble(total);
}

static PyMethodDef methods[] = {
    {"cost_exact", (PyCFunction)(void (*)(void))cost_exact, METH_FASTCALL,
     "cost_exact(spec, convention, plan, layers_out, globals_out) -> total MACs"},
    {"cost_expected", (PyCFunction)(void (*)(void))cost_expected, METH_FASTCALL,
     "cost_expected(spec, convention, x, out) -> expected MACs; writes the gradient to out"},
    {NULL, NULL, 0, NULL}};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_native", "The Swift core of uvc (cost model, solver, gates).", -1, methods};

PyMODINIT_FUNC PyInit__native(void) { return PyModule_Create(&module); }
