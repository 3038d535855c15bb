/* The C ABI between the Swift core and the CPython bridge: everything that crosses it.
 *
 * One entry point, uvc_call, runs a function or a method of a core-owned object on an
 * argument list; uvc_free releases an object. Every argument is a uvc_array; what each
 * function takes, by position and name, and every check on it live in the core
 * (Sources/UVCExports). The bridge only describes the Python objects it was given. */
#ifndef UVC_ABI_H
#define UVC_ABI_H
#include <stdint.h>

/* Element kinds. A Python float is a rank-0 UVC_FLOAT64 array, an int a rank-0 UVC_INT64
 * one (UVC_OTHER when it does not fit), None is UVC_NONE (data NULL). */
enum { UVC_NONE = 0, UVC_FLOAT64 = 1, UVC_INT64 = 2, UVC_BYTES = 3, UVC_OTHER = 4, UVC_FLOAT32 = 5 };
/* Flags of an array argument. */
enum { UVC_WRITABLE = 1, UVC_CONTIGUOUS = 2 };

/* One argument: `rank` extents at `shape`, elements at `data` (row-major when contiguous). */
typedef struct {
    void *data;
    const int64_t *shape;
    int64_t rank;
    int32_t kind;
    int32_t flags;
} uvc_array;

/* What a call gives back besides what it writes into its output arrays. */
enum { UVC_RESULT_NONE = 0, UVC_RESULT_FLOAT = 1, UVC_RESULT_BYTES = 2, UVC_RESULT_TEXT = 3,
       UVC_RESULT_OBJECT = 4 };
/* Status of a call: 0 success, else the Python exception to raise with `message`. */
enum { UVC_OK = 0, UVC_VALUE_ERROR = 1, UVC_TYPE_ERROR = 2 };
#define UVC_MESSAGE_CAPACITY 1024

typedef struct {
    int32_t kind;
    double value;           /* UVC_RESULT_FLOAT */
    const char *bytes;      /* UVC_RESULT_BYTES / _TEXT: core-owned, valid until the next call */
    int64_t length;
    void *object;           /* UVC_RESULT_OBJECT: a new object, released with uvc_free */
    char message[UVC_MESSAGE_CAPACITY];
} uvc_result;

/* Functions (object NULL) and methods (object from a *_NEW call), by number. */
enum {
    UVC_LAYOUTS = 0,
    UVC_COST_EXACT, UVC_COST_EXPECTED,
    UVC_GROUP_GATES, UVC_GROUP_GATES_BACKWARD, UVC_RESOURCE_LOSS,
    UVC_SOLVER_NEW, UVC_SOLVER_LAYOUT, UVC_SOLVER_SAMPLE_GATES, UVC_SOLVER_STEP, UVC_SOLVER_MASKS,
    UVC_SOLVER_PLAN, UVC_SOLVER_SUMMARY, UVC_SOLVER_FIELDS, UVC_SOLVER_SAVE, UVC_SOLVER_LOAD,
    UVC_SAMPLER_NEW, UVC_SAMPLER_GROUP_COUNT, UVC_SAMPLER_SAMPLE, UVC_SAMPLER_SAVE, UVC_SAMPLER_LOAD,
    UVC_GRAM_ACCUMULATE, UVC_RIDGE_SOLVE,
    UVC_LATENCY_EXACT, UVC_LATENCY_EXPECTED,
    UVC_FUNCTION_COUNT
};

#endif
