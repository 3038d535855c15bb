/* CPython glue for the Swift core. Describes each Python argument as a uvc_array (None, a
 * number, or a buffer's data, shape, kind and flags), calls uvc_call and turns its status
 * and result into Python. No logic lives here: what each function takes and every check on
 * it belong to the core (Sources/UVCExports). */
#include "uvc_bridge.h"
#include "UVCExports-Swift.h"

#define MAX_ARGS 32  /* the widest call, resource_loss with a latency table, takes 26 */
_Static_assert(sizeof(Py_ssize_t) == sizeof(int64_t), "shapes cross the ABI as int64");

typedef struct {
    Py_buffer view;
    int held;
    union { double d; long long q; } number;
} Slot;

static const int64_t no_shape[1] = {0};

static int32_t kind_of(const Py_buffer *v) {
    const char *f = v->format ? v->format : "B";
    if (*f == '@' || *f == '=' || *f == '<') f++;
    if (f[0] == '\0' || f[1] != '\0') return UVC_OTHER;
    if (v->itemsize == 8 && f[0] == 'd') return UVC_FLOAT64;
    if (v->itemsize == 4 && f[0] == 'f') return UVC_FLOAT32;
    if (v->itemsize == 8 && (f[0] == 'q' || f[0] == 'l')) return UVC_INT64;
    if (v->itemsize == 1 && f[0] == 'B') return UVC_BYTES;
    return UVC_OTHER;
}

static void describe(PyObject *obj, Slot *s, uvc_array *a) {
    *a = (uvc_array){NULL, no_shape, 0, UVC_OTHER, 0};
    s->held = 0;
    if (obj == Py_None) {
        a->kind = UVC_NONE;
    } else if (PyFloat_Check(obj)) {
        s->number.d = PyFloat_AsDouble(obj);
        *a = (uvc_array){&s->number, no_shape, 0, UVC_FLOAT64, 0};
    } else if (PyLong_Check(obj)) {
        int overflow;
        s->number.q = PyLong_AsLongLongAndOverflow(obj, &overflow);
        if (!overflow && !PyErr_Occurred()) *a = (uvc_array){&s->number, no_shape, 0, UVC_INT64, 0};
        PyErr_Clear();
    } else if (PyObject_GetBuffer(obj, &s->view, PyBUF_RECORDS_RO) == 0) {
        s->held = 1;
        *a = (uvc_array){s->view.buf, s->view.ndim ? (const int64_t *)s->view.shape : no_shape, s->view.ndim,
                         kind_of(&s->view),
                         (s->view.readonly ? 0 : UVC_WRITABLE) | (PyBuffer_IsContiguous(&s->view, 'C') ? UVC_CONTIGUOUS : 0)};
    } else {
        PyErr_Clear();
    }
    if (a->kind == UVC_OTHER && a->rank == 0) {
        /* Anything else that converts to a float (numpy float32 scalars, 0-d tensors) is a number. */
        PyObject *f = PyNumber_Float(obj);
        if (f != NULL) {
            if (s->held) PyBuffer_Release(&s->view);
            s->held = 0;
            s->number.d = PyFloat_AsDouble(f);
            *a = (uvc_array){&s->number, no_shape, 0, UVC_FLOAT64, 0};
            Py_DECREF(f);
        }
        PyErr_Clear();
    }
}

/* Runs one core call without the GIL; -1 (with a Python error set) if it could not be made. */
static int32_t invoke(int32_t fn, void *object, PyObject *const *args, Py_ssize_t n, uvc_result *r) {
    if (n > MAX_ARGS) {
        PyErr_Format(PyExc_TypeError, "at most %d arguments, got %zd", MAX_ARGS, n);
        return -1;
    }
    Slot slots[MAX_ARGS];
    uvc_array arrays[MAX_ARGS];
    for (Py_ssize_t i = 0; i < n; i++) describe(args[i], &slots[i], &arrays[i]);
    int32_t status;
    Py_BEGIN_ALLOW_THREADS
    status = uvc_call(fn, object, arrays, n, r);
    Py_END_ALLOW_THREADS
    for (Py_ssize_t i = 0; i < n; i++) if (slots[i].held) PyBuffer_Release(&slots[i].view);
    return status;
}

static PyObject *to_python(int32_t status, const uvc_result *r) {
    if (status < 0) return NULL;
    if (status != UVC_OK) {
        PyErr_SetString(status == UVC_TYPE_ERROR ? PyExc_TypeError : PyExc_ValueError, r->message);
        return NULL;
    }
    switch (r->kind) {
    case UVC_RESULT_FLOAT: return PyFloat_FromDouble(r->value);
    case UVC_RESULT_BYTES: return PyBytes_FromStringAndSize(r->bytes, r->length);
    case UVC_RESULT_TEXT: return PyUnicode_FromStringAndSize(r->bytes, r->length);
    default: Py_RETURN_NONE;
    }
}

static PyObject *call(int32_t fn, PyObject *const *args, Py_ssize_t n) {
    uvc_result r;
    int32_t status = invoke(fn, NULL, args, n, &r);
    return to_python(status, &r);
}

/* ---- Objects: a core-owned handle, used by one thread at a time ---- */

typedef struct {
    PyObject_HEAD
    void *core;
    int busy;
} Object;

static PyObject *create(PyTypeObject *type, PyObject *args, PyObject *kwargs, int32_t fn) {
    if (kwargs && PyDict_Size(kwargs) > 0) {
        PyErr_SetString(PyExc_TypeError, "takes no keyword arguments");
        return NULL;
    }
    Py_ssize_t n = PyTuple_Size(args);
    PyObject *items[MAX_ARGS];
    for (Py_ssize_t i = 0; i < n && i < MAX_ARGS; i++) items[i] = PyTuple_GetItem(args, i);
    uvc_result r;
    PyObject *none = to_python(invoke(fn, NULL, items, n, &r), &r);
    if (none == NULL) return NULL;
    Py_DECREF(none);
    Object *self = (Object *)((allocfunc)PyType_GetSlot(type, Py_tp_alloc))(type, 0);
    if (self == NULL) {
        uvc_free(r.object);
        return NULL;
    }
    self->core = r.object;
    self->busy = 0;
    return (PyObject *)self;
}

static PyObject *method(PyObject *self, int32_t fn, PyObject *const *args, Py_ssize_t n) {
    Object *o = (Object *)self;
    if (o->busy) {
        PyErr_SetString(PyExc_RuntimeError, "this object is in use by another thread (one call at a time: use one "
                                            "object per thread, or a lock)");
        return NULL;
    }
    o->busy = 1;
    uvc_result r;
    PyObject *out = to_python(invoke(fn, o->core, args, n, &r), &r);
    o->busy = 0;
    return out;
}

static void dealloc(PyObject *self) {
    PyTypeObject *type = Py_TYPE(self);
    if (((Object *)self)->core) uvc_free(((Object *)self)->core);
    ((freefunc)PyType_GetSlot(type, Py_tp_free))(self);
    Py_DECREF(type);
}

/* ---- Tables: Python names to core function numbers ---- */

#define FUNCTIONS(X) X(layouts, UVC_LAYOUTS) X(cost_exact, UVC_COST_EXACT) X(cost_expected, UVC_COST_EXPECTED) \
    X(group_gates, UVC_GROUP_GATES) X(group_gates_backward, UVC_GROUP_GATES_BACKWARD) \
    X(resource_loss, UVC_RESOURCE_LOSS) X(gram_accumulate, UVC_GRAM_ACCUMULATE) X(ridge_solve, UVC_RIDGE_SOLVE) \
    X(latency_exact, UVC_LATENCY_EXACT) X(latency_expected, UVC_LATENCY_EXPECTED)
#define SOLVER_METHODS(X) X(layout, UVC_SOLVER_LAYOUT) X(sample_gates, UVC_SOLVER_SAMPLE_GATES) \
    X(step, UVC_SOLVER_STEP) X(masks, UVC_SOLVER_MASKS) X(plan, UVC_SOLVER_PLAN) X(summary, UVC_SOLVER_SUMMARY) \
    X(fields, UVC_SOLVER_FIELDS) X(save, UVC_SOLVER_SAVE) X(load, UVC_SOLVER_LOAD)
#define SAMPLER_METHODS(X) X(group_count, UVC_SAMPLER_GROUP_COUNT) X(sample, UVC_SAMPLER_SAMPLE) \
    X(save, UVC_SAMPLER_SAVE) X(load, UVC_SAMPLER_LOAD)

#define FUNCTION(name, fn) \
    static PyObject *f_##name(PyObject *m, PyObject *const *a, Py_ssize_t n) { return call(fn, a, n); }
#define METHOD(name, fn) \
    static PyObject *m_##fn(PyObject *s, PyObject *const *a, Py_ssize_t n) { return method(s, fn, a, n); }
#define F_ENTRY(name, fn) {#name, (PyCFunction)(void (*)(void))f_##name, METH_FASTCALL, NULL},
#define M_ENTRY(name, fn) {#name, (PyCFunction)(void (*)(void))m_##fn, METH_FASTCALL, NULL},
FUNCTIONS(FUNCTION)
SOLVER_METHODS(METHOD)
SAMPLER_METHODS(METHOD)

static PyObject *solver_new(PyTypeObject *t, PyObject *a, PyObject *k) { return create(t, a, k, UVC_SOLVER_NEW); }
static PyObject *sampler_new(PyTypeObject *t, PyObject *a, PyObject *k) { return create(t, a, k, UVC_SAMPLER_NEW); }
static PyMethodDef functions[] = {FUNCTIONS(F_ENTRY) {NULL, NULL, 0, NULL}};
static PyMethodDef solver_methods[] = {SOLVER_METHODS(M_ENTRY) {NULL, NULL, 0, NULL}};
static PyMethodDef sampler_methods[] = {SAMPLER_METHODS(M_ENTRY) {NULL, NULL, 0, NULL}};

static PyType_Slot solver_slots[] = {
    {Py_tp_new, solver_new}, {Py_tp_dealloc, dealloc}, {Py_tp_methods, solver_methods},
    {Py_tp_doc, "The core's solver: state and last scores (see python/uvc/_native.pyi)."}, {0, NULL}};
static PyType_Slot sampler_slots[] = {
    {Py_tp_new, sampler_new}, {Py_tp_dealloc, dealloc}, {Py_tp_methods, sampler_methods},
    {Py_tp_doc, "The core's USDC group sampler (see python/uvc/_native.pyi)."}, {0, NULL}};
static PyType_Spec solver_spec = {"uvc._native.Solver", sizeof(Object), 0, Py_TPFLAGS_DEFAULT, solver_slots};
static PyType_Spec sampler_spec = {"uvc._native.GroupSampler", sizeof(Object), 0, Py_TPFLAGS_DEFAULT, sampler_slots};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_native", "The Swift core of uvc (see python/uvc/_native.pyi).", -1, functions};

PyMODINIT_FUNC PyInit__native(void) {
    PyObject *m = PyModule_Create(&module);
    PyType_Spec *specs[] = {&solver_spec, &sampler_spec};
    for (int i = 0; m != NULL && i < 2; i++) {
        PyObject *type = PyType_FromSpec(specs[i]);
        const char *name = strrchr(specs[i]->name, '.') + 1;
        if (type == NULL || PyModule_AddObjectRef(m, name, type) < 0) Py_CLEAR(m);
        Py_XDECREF(type);
    }
    return m;
}
