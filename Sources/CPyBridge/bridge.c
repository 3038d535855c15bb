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
    } else {
        /* The core multiplies the shape out in order: no partial product may overflow, even for 0 elements. */
        Py_ssize_t count = 1;
        for (int d = 0; d < view->ndim && !why; d++) {
            if (view->shape[d] != 0 && count > PY_SSIZE_T_MAX / view->shape[d]) why = "has too many elements";
            else count *= view->shape[d];
        }
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

/* Acquires the first n arguments as buffers and converts the m after them to doubles. */
static int acquire_with_scalars(const char *fn, PyObject *const *args, Py_ssize_t nargs, const ArgSpec *specs,
                                Py_ssize_t n, Py_buffer *views, const char *const *scalar_names,
                                double *scalars, Py_ssize_t m) {
    if (nargs != n + m) {
        PyErr_Format(PyExc_TypeError, "%s() takes %zd arguments, got %zd", fn, n + m, nargs);
        return -1;
    }
    for (Py_ssize_t i = 0; i < m; i++) {
        scalars[i] = PyFloat_AsDouble(args[n + i]);
        if (scalars[i] == -1.0 && PyErr_Occurred()) {
            PyErr_Clear();
            PyErr_Format(PyExc_TypeError, "%s(): argument '%s' must be a number", fn, scalar_names[i]);
            return -1;
        }
    }
    return acquire_all(fn, args, n, specs, n, views);
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

#define SOLVER_SETUP_SPECS {"spec", 'q', 0}, {"convention", 'd', 0}, {"config", 'd', 0}, {"zlr_schedule", 'd', 0}

static PyObject *solver_sizes(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    static const ArgSpec specs[] = {SOLVER_SETUP_SPECS, {"sizes_out", 'q', 1}};
    enum { N = sizeof specs / sizeof specs[0] };
    Py_buffer v[N];
    if (acquire_all("solver_sizes", args, nargs, specs, N, v) != 0) return NULL;
    char message[ERROR_CAPACITY];
    int status = uvc_solver_sizes(ARG(v[0]), ARG(v[1]), ARG(v[2]), ARG(v[3]), ARG(v[4]), message, ERROR_CAPACITY);
    release_all(v, N);
    if (raise_status("solver_sizes", status, message) != 0) return NULL;
    Py_RETURN_NONE;
}

static PyObject *solver_init(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    static const ArgSpec specs[] = {SOLVER_SETUP_SPECS, {"seed", 'q', 0}, {"state", 'd', 1}, {"words", 'q', 1},
                                    {"macs_out", 'd', 1}};
    enum { N = sizeof specs / sizeof specs[0] };
    Py_buffer v[N];
    if (acquire_all("solver_init", args, nargs, specs, N, v) != 0) return NULL;
    char message[ERROR_CAPACITY];
    int status = uvc_solver_init(ARG(v[0]), ARG(v[1]), ARG(v[2]), ARG(v[3]), ARG(v[4]), ARG(v[5]), ARG(v[6]),
                                 ARG(v[7]), message, ERROR_CAPACITY);
    release_all(v, N);
    if (raise_status("solver_init", status, message) != 0) return NULL;
    Py_RETURN_NONE;
}

static PyObject *solver_sample_gates(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    static const ArgSpec specs[] = {SOLVER_SETUP_SPECS, {"state", 'd', 1}, {"words", 'q', 1}, {"gates_out", 'd', 1}};
    static const char *const scalar_names[] = {"epoch"};
    enum { N = sizeof specs / sizeof specs[0] };
    Py_buffer v[N];
    double scalars[1];
    if (acquire_with_scalars("solver_sample_gates", args, nargs, specs, N, v, scalar_names, scalars, 1) != 0)
        return NULL;
    char message[ERROR_CAPACITY];
    int status = uvc_solver_sample_gates(ARG(v[0]), ARG(v[1]), ARG(v[2]), ARG(v[3]), ARG(v[4]), ARG(v[5]),
                                         ARG(v[6]), scalars[0], message, ERROR_CAPACITY);
    release_all(v, N);
    if (raise_status("solver_sample_gates", status, message) != 0) return NULL;
    Py_RETURN_NONE;
}

static PyObject *solver_step(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    static const ArgSpec specs[] = {
        SOLVER_SETUP_SPECS, {"state", 'd', 1}, {"words", 'q', 1},
        {"head_scores", 'd', 0}, {"dim_scores", 'd', 0}, {"neuron_scores", 'd', 0}, {"gate_grad", 'd', 0},
        {"head_factor", 'd', 1}, {"dim_factor", 'd', 1}, {"neuron_factor", 'd', 1},
        {"last_head", 'd', 1}, {"last_dim", 'd', 1}, {"last_neuron", 'd', 1}, {"token_scores", 'd', 0}};
    static const char *const scalar_names[] = {"lr", "epoch"};
    enum { N = sizeof specs / sizeof specs[0] };
    Py_buffer v[N];
    double scalars[2];
    if (acquire_with_scalars("solver_step", args, nargs, specs, N, v, scalar_names, scalars, 2) != 0) return NULL;
    char message[ERROR_CAPACITY];
    int status;
    Py_BEGIN_ALLOW_THREADS
    status = uvc_solver_step(ARG(v[0]), ARG(v[1]), ARG(v[2]), ARG(v[3]), ARG(v[4]), ARG(v[5]), ARG(v[6]), ARG(v[7]),
                             ARG(v[8]), ARG(v[9]), ARG(v[10]), ARG(v[11]), ARG(v[12]), ARG(v[13]), ARG(v[14]),
                             ARG(v[15]), ARG(v[16]), scalars[0], scalars[1], message, ERROR_CAPACITY);
    Py_END_ALLOW_THREADS
    release_all(v, N);
    if (raise_status("solver_step", status, message) != 0) return NULL;
    Py_RETURN_NONE;
}

static PyObject *solver_masks(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    static const ArgSpec specs[] = {
        SOLVER_SETUP_SPECS, {"state", 'd', 0}, {"words", 'q', 0},
        {"head_scores", 'd', 0}, {"dim_scores", 'd', 0}, {"neuron_scores", 'd', 0},
        {"head_mask", 'd', 1}, {"dim_mask", 'd', 1}, {"neuron_mask", 'd', 1}};
    enum { N = sizeof specs / sizeof specs[0] };
    Py_buffer v[N];
    if (acquire_all("solver_masks", args, nargs, specs, N, v) != 0) return NULL;
    char message[ERROR_CAPACITY];
    int status;
    Py_BEGIN_ALLOW_THREADS
    status = uvc_solver_masks(ARG(v[0]), ARG(v[1]), ARG(v[2]), ARG(v[3]), ARG(v[4]), ARG(v[5]), ARG(v[6]),
                              ARG(v[7]), ARG(v[8]), ARG(v[9]), ARG(v[10]), ARG(v[11]), message, ERROR_CAPACITY);
    Py_END_ALLOW_THREADS
    release_all(v, N);
    if (raise_status("solver_masks", status, message) != 0) return NULL;
    Py_RETURN_NONE;
}

static PyObject *solver_plan(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    static const ArgSpec specs[] = {
        SOLVER_SETUP_SPECS, {"state", 'd', 0}, {"words", 'q', 0},
        {"head_scores", 'd', 0}, {"dim_scores", 'd', 0}, {"neuron_scores", 'd', 0}, {"counts_out", 'q', 1},
        {"head_mask", 'd', 1}, {"dim_mask", 'd', 1}, {"neuron_mask", 'd', 1}};
    static const char *const scalar_names[] = {"round_to"};
    enum { N = sizeof specs / sizeof specs[0] };
    Py_buffer v[N];
    double scalars[1];
    if (acquire_with_scalars("solver_plan", args, nargs, specs, N, v, scalar_names, scalars, 1) != 0) return NULL;
    char message[ERROR_CAPACITY];
    double total = 0;
    int status;
    Py_BEGIN_ALLOW_THREADS
    status = uvc_solver_plan(ARG(v[0]), ARG(v[1]), ARG(v[2]), ARG(v[3]), ARG(v[4]), ARG(v[5]), ARG(v[6]),
                             ARG(v[7]), ARG(v[8]), ARG(v[9]), ARG(v[10]), ARG(v[11]), ARG(v[12]), scalars[0],
                             &total, message, ERROR_CAPACITY);
    Py_END_ALLOW_THREADS
    release_all(v, N);
    if (raise_status("solver_plan", status, message) != 0) return NULL;
    return PyFloat_FromDouble(total);
}

static PyObject *solver_summary(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    static const ArgSpec specs[] = {
        SOLVER_SETUP_SPECS, {"state", 'd', 0}, {"words", 'q', 0},
        {"probs_out", 'd', 1}, {"decisions_out", 'd', 1}, {"kept_out", 'd', 1}, {"values_out", 'd', 1}};
    enum { N = sizeof specs / sizeof specs[0] };
    Py_buffer v[N];
    if (acquire_all("solver_summary", args, nargs, specs, N, v) != 0) return NULL;
    char message[ERROR_CAPACITY];
    int status = uvc_solver_summary(ARG(v[0]), ARG(v[1]), ARG(v[2]), ARG(v[3]), ARG(v[4]), ARG(v[5]), ARG(v[6]),
                                    ARG(v[7]), ARG(v[8]), ARG(v[9]), message, ERROR_CAPACITY);
    release_all(v, N);
    if (raise_status("solver_summary", status, message) != 0) return NULL;
    Py_RETURN_NONE;
}

/* ---- USDC: group partitions, group gates, resource loss ---- */

static PyObject *usdc_seed(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    static const ArgSpec specs[] = {{"seed", 'q', 0}, {"words_out", 'q', 1}};
    enum { N = sizeof specs / sizeof specs[0] };
    Py_buffer v[N];
    if (acquire_all("usdc_seed", args, nargs, specs, N, v) != 0) return NULL;
    char message[ERROR_CAPACITY];
    int status = uvc_usdc_seed(ARG(v[0]), ARG(v[1]), message, ERROR_CAPACITY);
    release_all(v, N);
    if (raise_status("usdc_seed", status, message) != 0) return NULL;
    Py_RETURN_NONE;
}

static PyObject *usdc_partition(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    static const ArgSpec specs[] = {{"words", 'q', 1}, {"groups_out", 'q', 1}, {"sizes_out", 'q', 1},
                                    {"noise_out", 'd', 1}};
    static const char *const scalar_names[] = {"grouping"};
    enum { N = sizeof specs / sizeof specs[0] };
    Py_buffer v[N];
    double scalars[1];
    if (acquire_with_scalars("usdc_partition", args, nargs, specs, N, v, scalar_names, scalars, 1) != 0) return NULL;
    char message[ERROR_CAPACITY];
    int status = uvc_usdc_partition(ARG(v[0]), ARG(v[1]), ARG(v[2]), ARG(v[3]), scalars[0], message,
                                    ERROR_CAPACITY);
    release_all(v, N);
    if (raise_status("usdc_partition", status, message) != 0) return NULL;
    Py_RETURN_NONE;
}

static PyObject *usdc_group_gates(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    static const ArgSpec specs[] = {{"logits", 'd', 0}, {"groups", 'q', 0}, {"noise", 'd', 0},
                                    {"gates_out", 'd', 1}, {"probs_out", 'd', 1}};
    static const char *const scalar_names[] = {"tau", "straight_through"};
    enum { N = sizeof specs / sizeof specs[0] };
    Py_buffer v[N];
    double scalars[2];
    if (acquire_with_scalars("usdc_group_gates", args, nargs, specs, N, v, scalar_names, scalars, 2) != 0)
        return NULL;
    char message[ERROR_CAPACITY];
    int status = uvc_usdc_group_gates(ARG(v[0]), ARG(v[1]), ARG(v[2]), ARG(v[3]), ARG(v[4]), scalars[0],
                                      scalars[1], message, ERROR_CAPACITY);
    release_all(v, N);
    if (raise_status("usdc_group_gates", status, message) != 0) return NULL;
    Py_RETURN_NONE;
}

static PyObject *usdc_group_gates_backward(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    static const ArgSpec specs[] = {{"logits", 'd', 0}, {"groups", 'q', 0}, {"noise", 'd', 0},
                                    {"gate_grad", 'd', 0}, {"prob_grad", 'd', 0}, {"grad_out", 'd', 1}};
    static const char *const scalar_names[] = {"tau"};
    enum { N = sizeof specs / sizeof specs[0] };
    Py_buffer v[N];
    double scalars[1];
    if (acquire_with_scalars("usdc_group_gates_backward", args, nargs, specs, N, v, scalar_names, scalars, 1) != 0)
        return NULL;
    char message[ERROR_CAPACITY];
    int status = uvc_usdc_group_gates_backward(ARG(v[0]), ARG(v[1]), ARG(v[2]), ARG(v[3]), ARG(v[4]), ARG(v[5]),
                                               scalars[0], message, ERROR_CAPACITY);
    release_all(v, N);
    if (raise_status("usdc_group_gates_backward", status, message) != 0) return NULL;
    Py_RETURN_NONE;
}

static PyObject *usdc_resource_loss(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    static const ArgSpec specs[] = {
        {"spec", 'q', 0}, {"convention", 'd', 0}, {"head_probs", 'd', 0}, {"neuron_probs", 'd', 0},
        {"part_probs", 'd', 0}, {"rates", 'd', 0}, {"gate_macs", 'd', 0}, {"gate_probs", 'd', 0},
        {"values_out", 'd', 1}, {"head_grad", 'd', 1}, {"neuron_grad", 'd', 1}, {"part_grad", 'd', 1},
        {"rate_grad", 'd', 1}, {"gate_macs_grad", 'd', 1}, {"gate_probs_grad", 'd', 1}};
    static const char *const scalar_names[] = {"target", "gamma", "dual"};
    enum { N = sizeof specs / sizeof specs[0] };
    Py_buffer v[N];
    double scalars[3];
    if (acquire_with_scalars("usdc_resource_loss", args, nargs, specs, N, v, scalar_names, scalars, 3) != 0)
        return NULL;
    char message[ERROR_CAPACITY];
    int status = uvc_usdc_resource_loss(ARG(v[0]), ARG(v[1]), ARG(v[2]), ARG(v[3]), ARG(v[4]), ARG(v[5]), ARG(v[6]),
                                        ARG(v[7]), ARG(v[8]), ARG(v[9]), ARG(v[10]), ARG(v[11]), ARG(v[12]),
                                        ARG(v[13]), ARG(v[14]), scalars[0], scalars[1], scalars[2], message,
                                        ERROR_CAPACITY);
    release_all(v, N);
    if (raise_status("usdc_resource_loss", status, message) != 0) return NULL;
    Py_RETURN_NONE;
}

/* ---- end USDC ---- */

static PyMethodDef methods[] = {
    {"cost_exact", (PyCFunction)(void (*)(void))cost_exact, METH_FASTCALL,
     "cost_exact(spec, convention, plan, layers_out, globals_out) -> total MACs"},
    {"cost_expected", (PyCFunction)(void (*)(void))cost_expected, METH_FASTCALL,
     "cost_expected(spec, convention, x, out) -> expected MACs; writes the gradient to out"},
    {"solver_sizes", (PyCFunction)(void (*)(void))solver_sizes, METH_FASTCALL,
     "solver_sizes(spec, convention, config, zlr_schedule, sizes_out): sizes of the state's fields"},
    {"solver_init", (PyCFunction)(void (*)(void))solver_init, METH_FASTCALL,
     "solver_init(spec, convention, config, zlr_schedule, seed, state, words, macs_out): initial state"},
    {"solver_sample_gates", (PyCFunction)(void (*)(void))solver_sample_gates, METH_FASTCALL,
     "solver_sample_gates(spec, convention, config, zlr_schedule, state, words, gates_out, epoch)"},
    {"solver_step", (PyCFunction)(void (*)(void))solver_step, METH_FASTCALL,
     "solver_step(spec, convention, config, zlr_schedule, state, words, head_scores, dim_scores, neuron_scores, "
     "gate_grad, head_factor, dim_factor, neuron_factor, last_head, last_dim, last_neuron, token_scores, lr, epoch)"},
    {"solver_masks", (PyCFunction)(void (*)(void))solver_masks, METH_FASTCALL,
     "solver_masks(spec, convention, config, zlr_schedule, state, words, head_scores, dim_scores, neuron_scores, "
     "head_mask, dim_mask, neuron_mask)"},
    {"solver_plan", (PyCFunction)(void (*)(void))solver_plan, METH_FASTCALL,
     "solver_plan(spec, convention, config, zlr_schedule, state, words, head_scores, dim_scores, neuron_scores, "
     "counts_out, head_mask, dim_mask, neuron_mask, round_to) -> exact MACs of the plan"},
    {"solver_summary", (PyCFunction)(void (*)(void))solver_summary, METH_FASTCALL,
     "solver_summary(spec, convention, config, zlr_schedule, state, words, probs_out, decisions_out, kept_out, "
     "values_out)"},
    /* USDC */
    {"usdc_seed", (PyCFunction)(void (*)(void))usdc_seed, METH_FASTCALL, "usdc_seed(seed, words_out)"},
    {"usdc_partition", (PyCFunction)(void (*)(void))usdc_partition, METH_FASTCALL,
     "usdc_partition(words, groups_out, sizes_out, noise_out, grouping): one step's sub-groups and gate noise"},
    {"usdc_group_gates", (PyCFunction)(void (*)(void))usdc_group_gates, METH_FASTCALL,
     "usdc_group_gates(logits, groups, noise, gates_out, probs_out, tau, straight_through)"},
    {"usdc_group_gates_backward", (PyCFunction)(void (*)(void))usdc_group_gates_backward, METH_FASTCALL,
     "usdc_group_gates_backward(logits, groups, noise, gate_grad, prob_grad, grad_out, tau)"},
    {"usdc_resource_loss", (PyCFunction)(void (*)(void))usdc_resource_loss, METH_FASTCALL,
     "usdc_resource_loss(spec, convention, head_probs, neuron_probs, part_probs, rates, gate_macs, gate_probs, "
     "values_out, head_grad, neuron_grad, part_grad, rate_grad, gate_macs_grad, gate_probs_grad, target, gamma, dual)"},
    {NULL, NULL, 0, NULL}};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_native", "The Swift core of uvc (cost model, solver, gates).", -1, methods};

PyMODINIT_FUNC PyInit__native(void) { return PyModule_Create(&module); }
