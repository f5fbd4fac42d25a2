// mcutrain.Tensor: an n-d array (up to 4 dims) of float32, float16 or int8 with a scale
// and zero point, owning its data or viewing another object's buffer.
#ifndef MCUTRAIN_TENSOR_H
#define MCUTRAIN_TENSOR_H

#include "py/obj.h"

#define MT_MAX_DIMS (4)

typedef enum {
    MT_FLOAT32,
    MT_FLOAT16,
    MT_INT8,
} mt_dtype_t;

typedef struct {
    uint8_t ndim;
    int32_t dim[MT_MAX_DIMS];
} mt_shape_t;

typedef struct _mt_tensor_obj_t {
    mp_obj_base_t base;
    mt_dtype_t dtype;
    mt_shape_t shape;
    size_t size;             // elements
    float scale;             // int8: real = scale * (q - zero_point)
    int32_t zero_point;
    void *data;
    mp_obj_t owner;          // keeps a viewed buffer alive; MP_OBJ_NULL if data is ours
    size_t offset;           // a view's byte offset into its owner's buffer (mt_tensor_sync)
    mp_obj_t grad;           // a parameter's gradient Tensor (float32, its shape), or None
} mt_tensor_obj_t;

extern const mp_obj_type_t mt_tensor_type;

size_t mt_dtype_size(mt_dtype_t dtype);
qstr mt_dtype_qstr(mt_dtype_t dtype);
mt_dtype_t mt_dtype_from_obj(mp_obj_t obj);

// Elements of a shape (saturating at MT_SIZE_OVERFLOW, kernels/checked_size.h); for
// shapes already checked by mt_shape_bytes.
size_t mt_shape_size(const mt_shape_t *shape);
// Bytes of a `dtype` tensor of this shape, or MemoryError naming `what` and the shape if
// it does not fit: every tensor's elements, as float32, fit MT_SIZE_LIMIT bytes (so any
// dtype's copy, and every index the kernels compute, fits too).
size_t mt_shape_bytes(const mt_shape_t *shape, mt_dtype_t dtype, const char *what);
// count * item_bytes, or MemoryError "<what>: <count> x <item_bytes> bytes does not fit in
// memory" if it exceeds MT_SIZE_LIMIT (e.g. a layer's scratch from saturating helpers).
size_t mt_size_check(size_t count, size_t item_bytes, const char *what);
bool mt_shape_equal(const mt_shape_t *a, const mt_shape_t *b);
// Formats "(1, 16, 16, 3)" into buf (at least 64 bytes) for error messages.
const char *mt_shape_str(const mt_shape_t *shape, char *buf, size_t len);
// A shape from an int or a tuple/list of positive ints (ValueError names `what`).
void mt_shape_from_obj(mp_obj_t obj, mt_shape_t *shape, const char *what);
// Whether the int obj lies in [lo, hi], compared as a Python int (a big int never wraps
// into range); *value is set if so. TypeError if obj is not an int.
bool mt_int_get_in_range(mp_obj_t obj, mp_int_t lo, mp_int_t hi, mp_int_t *value);
mp_obj_t mt_shape_to_tuple(const mt_shape_t *shape);

// A new zero-filled tensor; raises MemoryError naming `what` if it does not fit.
mt_tensor_obj_t *mt_tensor_new(const mt_shape_t *shape, mt_dtype_t dtype, const char *what);
// A tensor viewing `data`, kept alive by `owner`.
mt_tensor_obj_t *mt_tensor_view(const mt_shape_t *shape, mt_dtype_t dtype, void *data, mp_obj_t owner);

// The tensor behind `obj`, or TypeError naming `what` (e.g. "Linear.forward: x"); a view
// is synced with its owner (mt_tensor_sync) first.
mt_tensor_obj_t *mt_tensor_get(mp_obj_t obj, const char *what);
// Re-resolves a view's data pointer from its owner's buffer, which may have moved since
// (a bytearray that grew is reallocated); ValueError if the buffer became too small. Call
// before using the data of a view kept from an earlier call.
void mt_tensor_sync(mt_tensor_obj_t *t);
// As mt_tensor_get, also requiring float32.
mt_tensor_obj_t *mt_tensor_get_f32(mp_obj_t obj, const char *what);

// Copies src into dst converting between float32 and float16 (same size, different
// dtypes); false if that is not such a pair.
bool mt_tensor_convert_into(const mt_tensor_obj_t *src, mt_tensor_obj_t *dst);

// Raises ValueError naming `what` unless scale is positive and finite and zero_point
// lies in [-128, 127].
void mt_qparams_check_obj(float scale, mp_int_t zero_point, const char *what);

static inline float *mt_tensor_f32(mt_tensor_obj_t *t) {
    return (float *)t->data;
}

#endif
