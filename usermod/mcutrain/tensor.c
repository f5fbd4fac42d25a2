// mcutrain.Tensor: construction, shape helpers, buffer protocol, tolist and repr.
#include <string.h>

#include "py/runtime.h"
#include "py/binary.h"
#include "py/objarray.h"
#include "tensor.h"
#include "kernels/half.h"
#include "kernels/checked_size.h"
#include "kernels/quant.h"

size_t mt_dtype_size(mt_dtype_t dtype) {
    static const uint8_t sizes[] = { [MT_FLOAT32] = 4, [MT_FLOAT16] = 2, [MT_INT8] = 1 };
    return sizes[dtype];
}

qstr mt_dtype_qstr(mt_dtype_t dtype) {
    static const qstr_short_t names[] = {
        [MT_FLOAT32] = MP_QSTR_float32, [MT_FLOAT16] = MP_QSTR_float16, [MT_INT8] = MP_QSTR_int8,
    };
    return names[dtype];
}

mt_dtype_t mt_dtype_from_obj(mp_obj_t obj) {
    if (mp_obj_is_str(obj)) {
        qstr q = mp_obj_str_get_qstr(obj);
        for (mt_dtype_t d = MT_FLOAT32; d <= MT_INT8; d++) {
            if (q == mt_dtype_qstr(d)) {
                return d;
            }
        }
    }
    // MicroPython's exception formatting has no %r: name the string, or the type.
    mp_raise_msg_varg(&mp_type_ValueError,
        MP_ERROR_TEXT("dtype must be mt.float32, mt.float16 or mt.int8, not %s"),
        mp_obj_is_str(obj) ? mp_obj_str_get_str(obj) : mp_obj_get_type_str(obj));
}

// Buffer typecodes of each dtype; float16 is exposed as raw 16-bit words.
static char dtype_typecode(mt_dtype_t dtype) {
    static const char codes[] = { [MT_FLOAT32] = 'f', [MT_FLOAT16] = 'H', [MT_INT8] = 'b' };
    return codes[dtype];
}

size_t mt_shape_size(const mt_shape_t *shape) {
    bool overflow = false;
    size_t n = 1;
    for (int i = 0; i < shape->ndim; i++) {
        n = mt_mul_size(n, shape->dim[i] > 0 ? (size_t)shape->dim[i] : MT_SIZE_OVERFLOW, &overflow);
    }
    return n;
}

size_t mt_shape_bytes(const mt_shape_t *shape, mt_dtype_t dtype, const char *what) {
    bool overflow = false;
    size_t n = mt_shape_size(shape);
    mt_mul_size(n, sizeof(float), &overflow);
    if (overflow) {
        char buf[64];
        mp_raise_msg_varg(&mp_type_MemoryError, MP_ERROR_TEXT("%s %s does not fit in memory"), what,
            mt_shape_str(shape, buf, sizeof(buf)));
    }
    return n * mt_dtype_size(dtype);
}

size_t mt_size_check(size_t count, size_t item_bytes, const char *what) {
    bool overflow = false;
    size_t bytes = mt_mul_size(count, item_bytes, &overflow);
    if (overflow && count <= MT_SIZE_LIMIT) {
        mp_raise_msg_varg(&mp_type_MemoryError, MP_ERROR_TEXT("%s: %u x %u bytes does not fit in memory"),
            what, (unsigned)count, (unsigned)item_bytes);
    }
    if (overflow) {
        // The count itself overflowed (saturated) on its way here.
        mp_raise_msg_varg(&mp_type_MemoryError, MP_ERROR_TEXT("%s: more than %u bytes does not fit in memory"),
            what, (unsigned)MT_SIZE_LIMIT);
    }
    return bytes;
}

bool mt_shape_equal(const mt_shape_t *a, const mt_shape_t *b) {
    if (a->ndim != b->ndim) {
        return false;
    }
    for (int i = 0; i < a->ndim; i++) {
        if (a->dim[i] != b->dim[i]) {
            return false;
        }
    }
    return true;
}

const char *mt_shape_str(const mt_shape_t *shape, char *buf, size_t len) {
    vstr_t vstr;
    vstr_init_fixed_buf(&vstr, len, buf);
    vstr_add_char(&vstr, '(');
    for (int i = 0; i < shape->ndim; i++) {
        vstr_printf(&vstr, i ? ", %d" : "%d", (int)shape->dim[i]);
    }
    vstr_add_str(&vstr, shape->ndim == 1 ? ",)" : ")");
    return vstr_null_terminated_str(&vstr);
}

bool mt_int_get_in_range(mp_obj_t obj, mp_int_t lo, mp_int_t hi, mp_int_t *value) {
    if (mp_obj_is_int(obj) && !mp_obj_is_small_int(obj)) {
        // A big int: compare it as a Python int, before narrowing could wrap it.
        if (mp_binary_op(MP_BINARY_OP_LESS, obj, mp_obj_new_int(lo)) == mp_const_true
            || mp_binary_op(MP_BINARY_OP_MORE, obj, mp_obj_new_int(hi)) == mp_const_true) {
            return false;
        }
    }
    mp_int_t v = mp_obj_get_int(obj);  // TypeError for what is not an int
    if (v < lo || v > hi) {
        return false;
    }
    *value = v;
    return true;
}

void mt_shape_from_obj(mp_obj_t obj, mt_shape_t *shape, const char *what) {
    size_t n;
    mp_obj_t *items;
    if (mp_obj_is_int(obj)) {
        n = 1;
        items = &obj;
    } else if (mp_obj_is_type(obj, &mp_type_tuple) || mp_obj_is_type(obj, &mp_type_list)) {
        mp_obj_get_array(obj, &n, &items);
    } else {
        mp_raise_msg_varg(&mp_type_TypeError,
            MP_ERROR_TEXT("%s must be an int or a tuple of ints, not %s"), what,
            mp_obj_get_type_str(obj));
    }
    if (n < 1 || n > MT_MAX_DIMS) {
        mp_raise_msg_varg(&mp_type_ValueError,
            MP_ERROR_TEXT("%s must have 1 to %d dimensions, not %u"), what, MT_MAX_DIMS, (unsigned)n);
    }
    shape->ndim = (uint8_t)n;
    for (size_t i = 0; i < n; i++) {
        mp_int_t d;
        if (!mt_int_get_in_range(items[i], 1, (mp_int_t)(MT_SIZE_LIMIT / sizeof(float)), &d)) {
            if (mp_binary_op(MP_BINARY_OP_LESS, items[i], MP_OBJ_NEW_SMALL_INT(1)) == mp_const_true) {
                mp_raise_msg_varg(&mp_type_ValueError,
                    MP_ERROR_TEXT("%s: dimension %u must be positive"), what, (unsigned)i);
            }
            mp_raise_msg_varg(&mp_type_MemoryError,
                MP_ERROR_TEXT("%s: dimension %u does not fit in memory"), what, (unsigned)i);
        }
        shape->dim[i] = (int32_t)d;
    }
    mt_shape_bytes(shape, MT_FLOAT32, what);
}

mp_obj_t mt_shape_to_tuple(const mt_shape_t *shape) {
    mp_obj_t items[MT_MAX_DIMS];
    for (int i = 0; i < shape->ndim; i++) {
        items[i] = MP_OBJ_NEW_SMALL_INT(shape->dim[i]);
    }
    return mp_obj_new_tuple(shape->ndim, items);
}

static mt_tensor_obj_t *tensor_alloc(const mt_shape_t *shape, mt_dtype_t dtype) {
    mt_tensor_obj_t *t = mp_obj_malloc(mt_tensor_obj_t, &mt_tensor_type);
    t->dtype = dtype;
    t->shape = *shape;
    t->size = mt_shape_size(shape);
    t->scale = 1.0f;
    t->zero_point = 0;
    t->data = NULL;
    t->owner = MP_OBJ_NULL;
    t->offset = 0;
    t->grad = mp_const_none;
    return t;
}

mt_tensor_obj_t *mt_tensor_new(const mt_shape_t *shape, mt_dtype_t dtype, const char *what) {
    size_t bytes = mt_shape_bytes(shape, dtype, what);
    mt_tensor_obj_t *t = tensor_alloc(shape, dtype);
    // A failed allocation names what did not fit, rather than a bare MemoryError.
    t->data = m_malloc_maybe(bytes ? bytes : 1);
    if (t->data == NULL) {
        mp_raise_msg_varg(&mp_type_MemoryError,
            MP_ERROR_TEXT("%s: cannot allocate %u bytes"), what, (unsigned)bytes);
    }
    memset(t->data, 0, bytes);
    return t;
}

// The start and length of the buffer a view's owner holds now.
static uint8_t *owner_buffer(mp_obj_t owner, size_t *len) {
    if (mp_obj_is_type(owner, &mt_tensor_type)) {
        mt_tensor_obj_t *o = MP_OBJ_TO_PTR(owner);
        mt_tensor_sync(o);
        *len = o->size * mt_dtype_size(o->dtype);
        return o->data;
    }
    mp_buffer_info_t info;
    mp_get_buffer_raise(owner, &info, MP_BUFFER_READ);
    *len = info.len;
    return info.buf;
}

mt_tensor_obj_t *mt_tensor_view(const mt_shape_t *shape, mt_dtype_t dtype, void *data, mp_obj_t owner) {
    mt_tensor_obj_t *t = tensor_alloc(shape, dtype);
    t->data = data;
    t->owner = owner;
    if (owner != MP_OBJ_NULL) {
        size_t len;
        t->offset = (size_t)((uint8_t *)data - owner_buffer(owner, &len));
    }
    return t;
}

// A bytearray or array that grows is reallocated, and the old memory freed: a view must
// never keep using a pointer it took earlier.
void mt_tensor_sync(mt_tensor_obj_t *t) {
    if (t->data == NULL) {
        // A planned view's header (Flatten, in-place ReLU...) before any pass has pointed it
        // at its input: every use would read or write address 0.
        mp_raise_ValueError(MP_ERROR_TEXT("Tensor: no data yet (a layer output before forward)"));
    }
    if (t->owner == MP_OBJ_NULL) {
        return;
    }
    size_t len;
    uint8_t *base = owner_buffer(t->owner, &len);
    size_t item = mt_dtype_size(t->dtype), need = t->size * item;
    if (len < t->offset || len - t->offset < need) {
        mp_raise_msg_varg(&mp_type_ValueError,
            MP_ERROR_TEXT("Tensor: its buffer shrank to %u bytes, the view needs %u"), (unsigned)len,
            (unsigned)(t->offset + need));
    }
    if (((uintptr_t)(base + t->offset) & (item - 1)) != 0) {
        mp_raise_ValueError(MP_ERROR_TEXT("Tensor: its buffer moved and is not aligned for the dtype"));
    }
    t->data = base + t->offset;
}

mt_tensor_obj_t *mt_tensor_get(mp_obj_t obj, const char *what) {
    if (!mp_obj_is_type(obj, &mt_tensor_type)) {
        mp_raise_msg_varg(&mp_type_TypeError, MP_ERROR_TEXT("%s must be a Tensor, not %s"), what,
            mp_obj_get_type_str(obj));
    }
    mt_tensor_obj_t *t = MP_OBJ_TO_PTR(obj);
    mt_tensor_sync(t);
    return t;
}

mt_tensor_obj_t *mt_tensor_get_f32(mp_obj_t obj, const char *what) {
    mt_tensor_obj_t *t = mt_tensor_get(obj, what);
    if (t->dtype != MT_FLOAT32) {
        mp_raise_msg_varg(&mp_type_TypeError, MP_ERROR_TEXT("%s must be float32, not %q"), what,
            mt_dtype_qstr(t->dtype));
    }
    return t;
}

void mt_qparams_check_obj(float scale, mp_int_t zero_point, const char *what) {
    // isfinite() would need libm on some ports; NaN fails every comparison.
    if (!(scale > 0.0f && scale <= 3.0e38f)) {
        mp_raise_msg_varg(&mp_type_ValueError,
            MP_ERROR_TEXT("%s: scale must be a positive finite number, not %f"), what, (double)scale);
    }
    if (zero_point < -128 || zero_point > 127) {
        mp_raise_msg_varg(&mp_type_ValueError,
            MP_ERROR_TEXT("%s: zero_point must be in [-128, 127], not %d"), what, (int)zero_point);
    }
}

bool mt_tensor_convert_into(const mt_tensor_obj_t *src, mt_tensor_obj_t *dst) {
    if (src->size != dst->size || src->dtype == dst->dtype) {
        return false;
    }
    if (src->dtype == MT_FLOAT32 && dst->dtype == MT_FLOAT16) {
        mt_f32_to_f16_array(src->data, dst->data, dst->size);
        return true;
    }
    if (src->dtype == MT_FLOAT16 && dst->dtype == MT_FLOAT32) {
        mt_f16_to_f32_array(src->data, dst->data, dst->size);
        return true;
    }
    return false;
}

static mp_obj_t tensor_get_item(const mt_tensor_obj_t *t, size_t i) {
    switch (t->dtype) {
        case MT_FLOAT32:
            return mp_obj_new_float_from_f(((const float *)t->data)[i]);
        case MT_FLOAT16:
            return mp_obj_new_float_from_f(mt_f16_to_f32(((const uint16_t *)t->data)[i]));
        default:
            return MP_OBJ_NEW_SMALL_INT(((const int8_t *)t->data)[i]);
    }
}

static void tensor_set_item(mt_tensor_obj_t *t, size_t i, mp_obj_t value) {
    switch (t->dtype) {
        case MT_FLOAT32:
            ((float *)t->data)[i] = (float)mp_obj_get_float(value);
            break;
        case MT_FLOAT16:
            ((uint16_t *)t->data)[i] = mt_f32_to_f16((float)mp_obj_get_float(value));
            break;
        default: {
            mp_int_t q = mp_obj_get_int(value);
            if (q < -128 || q > 127) {
                mp_raise_ValueError(MP_ERROR_TEXT("int8 value out of range"));
            }
            ((int8_t *)t->data)[i] = (int8_t)q;
        }
    }
}

// Shape of a nested list/tuple, checking that it is rectangular.
static void nested_shape(mp_obj_t obj, mt_shape_t *shape) {
    shape->ndim = 0;
    while (mp_obj_is_type(obj, &mp_type_list) || mp_obj_is_type(obj, &mp_type_tuple)) {
        size_t n;
        mp_obj_t *items;
        mp_obj_get_array(obj, &n, &items);
        if (shape->ndim == MT_MAX_DIMS) {
            mp_raise_msg_varg(&mp_type_ValueError,
                MP_ERROR_TEXT("Tensor: more than %d nested levels"), MT_MAX_DIMS);
        }
        if (n == 0) {
            mp_raise_ValueError(MP_ERROR_TEXT("Tensor: empty list"));
        }
        shape->dim[shape->ndim++] = (int32_t)n;
        obj = items[0];
    }
    if (shape->ndim == 0) {
        shape->ndim = 1;
        shape->dim[0] = 1;
    }
}

// Copies nested lists into t in row-major order; returns the next flat index.
static size_t fill_nested(mt_tensor_obj_t *t, mp_obj_t obj, int level, size_t index) {
    if (level == t->shape.ndim) {
        if (mp_obj_is_type(obj, &mp_type_list) || mp_obj_is_type(obj, &mp_type_tuple)) {
            mp_raise_ValueError(MP_ERROR_TEXT("Tensor: nested lists are not rectangular"));
        }
        tensor_set_item(t, index, obj);
        return index + 1;
    }
    size_t n;
    mp_obj_t *items;
    if (!(mp_obj_is_type(obj, &mp_type_list) || mp_obj_is_type(obj, &mp_type_tuple))) {
        mp_raise_ValueError(MP_ERROR_TEXT("Tensor: nested lists are not rectangular"));
    }
    mp_obj_get_array(obj, &n, &items);
    if ((int32_t)n != t->shape.dim[level]) {
        mp_raise_ValueError(MP_ERROR_TEXT("Tensor: nested lists are not rectangular"));
    }
    for (size_t i = 0; i < n; i++) {
        index = fill_nested(t, items[i], level + 1, index);
    }
    return index;
}

// Tensor(data, shape=None, dtype=float32): copies a (nested) list or a buffer.
static mp_obj_t tensor_make_new(const mp_obj_type_t *type, size_t n_args, size_t n_kw, const mp_obj_t *all_args) {
    (void)type;
    enum { ARG_data, ARG_shape, ARG_dtype, ARG_scale, ARG_zero_point };
    static const mp_arg_t allowed_args[] = {
        { MP_QSTR_data, MP_ARG_REQUIRED | MP_ARG_OBJ, {.u_obj = MP_OBJ_NULL} },
        { MP_QSTR_shape, MP_ARG_OBJ, {.u_obj = mp_const_none} },
        { MP_QSTR_dtype, MP_ARG_KW_ONLY | MP_ARG_OBJ, {.u_obj = MP_ROM_QSTR(MP_QSTR_float32)} },
        { MP_QSTR_scale, MP_ARG_KW_ONLY | MP_ARG_OBJ, {.u_obj = mp_const_none} },
        { MP_QSTR_zero_point, MP_ARG_KW_ONLY | MP_ARG_INT, {.u_int = 0} },
    };
    mp_arg_val_t args[MP_ARRAY_SIZE(allowed_args)];
    mp_arg_parse_all_kw_array(n_args, n_kw, all_args, MP_ARRAY_SIZE(allowed_args), allowed_args, args);

    mp_obj_t data = args[ARG_data].u_obj;
    mt_dtype_t dtype = mt_dtype_from_obj(args[ARG_dtype].u_obj);
    mt_shape_t shape;
    mt_tensor_obj_t *t;
    if (mp_obj_is_type(data, &mp_type_list) || mp_obj_is_type(data, &mp_type_tuple)) {
        nested_shape(data, &shape);
        t = mt_tensor_new(&shape, dtype, "Tensor");
        if (mp_obj_is_type(data, &mp_type_list) || mp_obj_is_type(data, &mp_type_tuple)) {
            fill_nested(t, data, 0, 0);
        }
        if (args[ARG_shape].u_obj != mp_const_none) {
            mt_shape_from_obj(args[ARG_shape].u_obj, &shape, "Tensor: shape");
            if (mt_shape_size(&shape) != t->size) {
                mp_raise_ValueError(MP_ERROR_TEXT("Tensor: shape does not match the data's size"));
            }
            t->shape = shape;
        }
    } else {
        mp_buffer_info_t info;
        if (data == mp_const_none || !mp_get_buffer(data, &info, MP_BUFFER_READ)) {
            mp_raise_msg_varg(&mp_type_TypeError,
                MP_ERROR_TEXT("Tensor: data must be a list or a buffer, not %s"),
                mp_obj_get_type_str(data));
        }
        size_t item = mt_dtype_size(dtype);
        bool bytes = info.typecode == 'B' || info.typecode == BYTEARRAY_TYPECODE;
        if (!bytes && info.typecode != dtype_typecode(dtype)) {
            mp_raise_msg_varg(&mp_type_TypeError,
                MP_ERROR_TEXT("Tensor: a %q tensor needs a buffer of typecode '%c' or bytes, not '%c'"),
                mt_dtype_qstr(dtype), dtype_typecode(dtype), info.typecode);
        }
        if (info.len % item != 0 || info.len == 0) {
            mp_raise_msg_varg(&mp_type_ValueError,
                MP_ERROR_TEXT("Tensor: buffer of %u bytes is not a whole number of %q items"),
                (unsigned)info.len, mt_dtype_qstr(dtype));
        }
        if (args[ARG_shape].u_obj == mp_const_none) {
            shape.ndim = 1;
            shape.dim[0] = (int32_t)(info.len / item);
        } else {
            mt_shape_from_obj(args[ARG_shape].u_obj, &shape, "Tensor: shape");
        }
        if (mt_shape_size(&shape) * item != info.len) {
            mp_raise_msg_varg(&mp_type_ValueError,
                MP_ERROR_TEXT("Tensor: shape needs %u bytes, the buffer has %u"),
                (unsigned)(mt_shape_size(&shape) * item), (unsigned)info.len);
        }
        t = mt_tensor_new(&shape, dtype, "Tensor");
        memcpy(t->data, info.buf, info.len);
    }
    if (args[ARG_scale].u_obj != mp_const_none) {
        t->scale = (float)mp_obj_get_float(args[ARG_scale].u_obj);
    }
    mt_qparams_check_obj(t->scale, args[ARG_zero_point].u_int, "Tensor");
    t->zero_point = (int32_t)args[ARG_zero_point].u_int;
    return MP_OBJ_FROM_PTR(t);
}

static void tensor_print(const mp_print_t *print, mp_obj_t self_in, mp_print_kind_t kind) {
    (void)kind;
    mt_tensor_obj_t *t = MP_OBJ_TO_PTR(self_in);
    char buf[64];
    mp_printf(print, "Tensor(shape=%s, dtype=%q", mt_shape_str(&t->shape, buf, sizeof(buf)),
        mt_dtype_qstr(t->dtype));
    if (t->data == NULL) {
        mp_print_str(print, ", no data yet)");  // a planned view before forward (mt_tensor_sync)
        return;
    }
    mt_tensor_sync(t);
    if (t->dtype == MT_INT8) {
        mp_printf(print, ", scale=%f, zero_point=%d", (double)t->scale, (int)t->zero_point);
    }
    // Show the first few values: enough to recognize a tensor without flooding a REPL.
    mp_print_str(print, ", data=[");
    size_t shown = t->size < 8 ? t->size : 8;
    for (size_t i = 0; i < shown; i++) {
        if (i) {
            mp_print_str(print, ", ");
        }
        mp_obj_print_helper(print, tensor_get_item(t, i), PRINT_REPR);
    }
    mp_print_str(print, t->size > shown ? ", ...])" : "])");
}

static mp_obj_t tolist_level(const mt_tensor_obj_t *t, int level, size_t *index) {
    if (level == t->shape.ndim) {
        return tensor_get_item(t, (*index)++);
    }
    size_t n = (size_t)t->shape.dim[level];
    mp_obj_list_t *list = MP_OBJ_TO_PTR(mp_obj_new_list(n, NULL));
    for (size_t i = 0; i < n; i++) {
        list->items[i] = tolist_level(t, level + 1, index);
    }
    return MP_OBJ_FROM_PTR(list);
}

static mp_obj_t tensor_tolist(mp_obj_t self_in) {
    size_t index = 0;
    return tolist_level(mt_tensor_get(self_in, "tolist"), 0, &index);
}
static MP_DEFINE_CONST_FUN_OBJ_1(tensor_tolist_obj, tensor_tolist);

static mp_obj_t tensor_fill(mp_obj_t self_in, mp_obj_t value) {
    mt_tensor_obj_t *t = mt_tensor_get(self_in, "fill");
    for (size_t i = 0; i < t->size; i++) {
        tensor_set_item(t, i, value);
    }
    return mp_const_none;
}
static MP_DEFINE_CONST_FUN_OBJ_2(tensor_fill_obj, tensor_fill);

// One element as a real number (int8: scale * (q - zero_point)).
static float tensor_real(const mt_tensor_obj_t *t, size_t i) {
    switch (t->dtype) {
        case MT_FLOAT32:
            return ((const float *)t->data)[i];
        case MT_FLOAT16:
            return mt_f16_to_f32(((const uint16_t *)t->data)[i]);
        default:
            return t->scale * (float)((int32_t)((const int8_t *)t->data)[i] - t->zero_point);
    }
}

// Stores a real number (int8: quantized with the tensor's own scale and zero point,
// rounding to nearest even and saturating).
static void tensor_set_real(mt_tensor_obj_t *t, size_t i, float v) {
    switch (t->dtype) {
        case MT_FLOAT32:
            ((float *)t->data)[i] = v;
            break;
        case MT_FLOAT16:
            ((uint16_t *)t->data)[i] = mt_f32_to_f16(v);
            break;
        default: {
            // Clamped before the zero point is added, so a huge v cannot overflow.
            int32_t r = mt_round_half_even(v / t->scale);
            r = r < -256 ? -256 : r > 256 ? 256 : r;
            r += t->zero_point;
            ((int8_t *)t->data)[i] = (int8_t)(r < -128 ? -128 : r > 127 ? 127 : r);
        }
    }
}

static bool ranges_overlap(const void *a, size_t a_len, const void *b, size_t b_len) {
    uintptr_t pa = (uintptr_t)a, pb = (uintptr_t)b;
    return pa < pb + b_len && pb < pa + a_len;
}

// A Tensor source: the same dtype (and int8 quantization) is copied as is, any other pair
// is converted value by value (int8 by its scale and zero point).
static void copy_from_tensor(mt_tensor_obj_t *t, const mt_tensor_obj_t *src) {
    if (src->size != t->size) {
        mp_raise_msg_varg(&mp_type_ValueError,
            MP_ERROR_TEXT("copy_from: tensor has %u items, source %u"), (unsigned)t->size, (unsigned)src->size);
    }
    size_t bytes = t->size * mt_dtype_size(t->dtype);
    if (src->dtype == t->dtype && (t->dtype != MT_INT8
                                   || (src->scale == t->scale && src->zero_point == t->zero_point))) {
        memmove(t->data, src->data, bytes);
        return;
    }
    if (ranges_overlap(t->data, bytes, src->data, src->size * mt_dtype_size(src->dtype))) {
        mp_raise_ValueError(MP_ERROR_TEXT("copy_from: a converting copy needs separate memory"));
    }
    if (mt_tensor_convert_into(src, t)) {
        return;
    }
    for (size_t i = 0; i < t->size; i++) {
        tensor_set_real(t, i, tensor_real(src, i));
    }
}

// Bytes of one item of a buffer with this typecode; TypeError for one it cannot read.
static size_t buffer_item_size(char typecode) {
    size_t item = typecode == BYTEARRAY_TYPECODE ? 1 : mp_binary_get_size('@', typecode, NULL);
    if (item == 0 || typecode == 'O') {
        mp_raise_msg_varg(&mp_type_TypeError, MP_ERROR_TEXT("copy_from: cannot read a buffer of typecode %d"),
            (int)typecode);
    }
    return item;
}

// A buffer source without a scale: bytes (and the dtype's own typecode) are the tensor's raw
// memory; items of any other typecode are values (into int8: floats are quantized, ints
// are the int8 values themselves, as in Tensor([...], dtype=mt.int8)).
static void copy_from_buffer(mt_tensor_obj_t *t, const mp_buffer_info_t *info) {
    size_t bytes = t->size * mt_dtype_size(t->dtype);
    if (info->typecode == 'B' || info->typecode == BYTEARRAY_TYPECODE || info->typecode == dtype_typecode(t->dtype)) {
        if (info->len != bytes) {
            mp_raise_msg_varg(&mp_type_ValueError,
                MP_ERROR_TEXT("copy_from: tensor has %u bytes, source %u"), (unsigned)bytes, (unsigned)info->len);
        }
        memmove(t->data, info->buf, bytes);
        return;
    }
    size_t item = buffer_item_size(info->typecode);
    if (info->len / item != t->size || info->len % item != 0) {
        mp_raise_msg_varg(&mp_type_ValueError,
            MP_ERROR_TEXT("copy_from: tensor has %u items, source %u"), (unsigned)t->size, (unsigned)(info->len / item));
    }
    if (ranges_overlap(t->data, bytes, info->buf, info->len)) {
        mp_raise_ValueError(MP_ERROR_TEXT("copy_from: a converting copy needs separate memory"));
    }
    bool is_float = info->typecode == 'f' || info->typecode == 'd';
    for (size_t i = 0; i < t->size; i++) {
        mp_obj_t v = mp_binary_get_val_array(info->typecode, info->buf, i);
        if (t->dtype == MT_INT8 && !is_float) {
            tensor_set_item(t, i, v);
        } else {
            tensor_set_real(t, i, (float)mp_obj_get_float(v));
        }
    }
}

// copy_from(src, scale=None, zero_point=0): copies a same-size tensor or buffer into
// this tensor's memory, converting between dtypes (copy_from_tensor, copy_from_buffer);
// with a scale, converts integer items q to scale * (q - zero_point) (e.g. 8-bit pixels
// into a float32 input) without an intermediate copy.
static mp_obj_t tensor_copy_from(size_t n_args, const mp_obj_t *pos_args, mp_map_t *kw_args) {
    enum { ARG_src, ARG_scale, ARG_zero_point };
    static const mp_arg_t allowed_args[] = {
        { MP_QSTR_src, MP_ARG_REQUIRED | MP_ARG_OBJ, {.u_obj = MP_OBJ_NULL} },
        { MP_QSTR_scale, MP_ARG_OBJ, {.u_obj = mp_const_none} },
        { MP_QSTR_zero_point, MP_ARG_INT, {.u_int = 0} },
    };
    mp_arg_val_t args[MP_ARRAY_SIZE(allowed_args)];
    mp_arg_parse_all(n_args - 1, pos_args + 1, kw_args, MP_ARRAY_SIZE(allowed_args), allowed_args, args);
    mt_tensor_obj_t *t = mt_tensor_get(pos_args[0], "copy_from");
    mp_obj_t src = args[ARG_src].u_obj;
    bool src_tensor = mp_obj_is_type(src, &mt_tensor_type);
    if (src_tensor) {
        mt_tensor_get(src, "copy_from: src");  // synced, and refused if it has no data yet
    }
    mp_buffer_info_t info;
    if (src == mp_const_none || !mp_get_buffer(src, &info, MP_BUFFER_READ)) {
        mp_raise_msg_varg(&mp_type_TypeError, MP_ERROR_TEXT("copy_from: need a buffer, not %s"),
            mp_obj_get_type_str(src));
    }
    if (args[ARG_scale].u_obj == mp_const_none) {
        if (src_tensor) {
            copy_from_tensor(t, MP_OBJ_TO_PTR(src));
        } else {
            copy_from_buffer(t, &info);
        }
        return mp_const_none;
    }
    if (t->dtype != MT_FLOAT32 || info.typecode == 'f' || info.typecode == 'd'
        || (src_tensor && ((mt_tensor_obj_t *)MP_OBJ_TO_PTR(src))->dtype != MT_INT8)) {
        mp_raise_TypeError(MP_ERROR_TEXT("copy_from with scale: integer source into a float32 tensor"));
    }
    float scale = (float)mp_obj_get_float(args[ARG_scale].u_obj);
    if (!(scale > 0.0f && scale <= 3.0e38f)) {  // as Tensor.scale; any int zero point (pixels: 128)
        mp_raise_msg_varg(&mp_type_ValueError,
            MP_ERROR_TEXT("copy_from: scale must be a positive finite number, not %f"), (double)scale);
    }
    size_t item = buffer_item_size(info.typecode);
    if (info.len / item != t->size || info.len % item != 0) {
        mp_raise_msg_varg(&mp_type_ValueError,
            MP_ERROR_TEXT("copy_from: tensor has %u items, source %u"), (unsigned)t->size, (unsigned)(info.len / item));
    }
    int32_t zero_point = (int32_t)args[ARG_zero_point].u_int;
    float *dst = mt_tensor_f32(t);
    if (info.typecode == 'B' || info.typecode == BYTEARRAY_TYPECODE) {
        const uint8_t *q = info.buf;  // the common cases (pixels, int8 datasets) without dispatch
        for (size_t i = 0; i < t->size; i++) {
            dst[i] = scale * (float)((int32_t)q[i] - zero_point);
        }
    } else if (info.typecode == 'b') {
        const int8_t *q = info.buf;
        for (size_t i = 0; i < t->size; i++) {
            dst[i] = scale * (float)((int32_t)q[i] - zero_point);
        }
    } else {
        for (size_t i = 0; i < t->size; i++) {
            mp_int_t q = mp_obj_get_int(mp_binary_get_val_array(info.typecode, info.buf, i));
            dst[i] = scale * (float)(q - zero_point);
        }
    }
    return mp_const_none;
}
static MP_DEFINE_CONST_FUN_OBJ_KW(tensor_copy_from_obj, 2, tensor_copy_from);

// reshape(shape): a view of the same data with another shape of the same size.
static mp_obj_t tensor_reshape(mp_obj_t self_in, mp_obj_t shape_in) {
    mt_tensor_obj_t *t = mt_tensor_get(self_in, "reshape");
    mt_shape_t shape;
    mt_shape_from_obj(shape_in, &shape, "reshape: shape");
    if (mt_shape_size(&shape) != t->size) {
        char a[64], b[64];
        mp_raise_msg_varg(&mp_type_ValueError, MP_ERROR_TEXT("reshape: cannot view %s as %s"),
            mt_shape_str(&t->shape, a, sizeof(a)), mt_shape_str(&shape, b, sizeof(b)));
    }
    mt_tensor_obj_t *v = mt_tensor_view(&shape, t->dtype, t->data, self_in);
    v->scale = t->scale;
    v->zero_point = t->zero_point;
    return MP_OBJ_FROM_PTR(v);
}
static MP_DEFINE_CONST_FUN_OBJ_2(tensor_reshape_obj, tensor_reshape);

static void tensor_attr(mp_obj_t self_in, qstr attr, mp_obj_t *dest) {
    mt_tensor_obj_t *t = MP_OBJ_TO_PTR(self_in);
    if (dest[0] == MP_OBJ_SENTINEL) {
        // Store: only the gradient, scale and zero point are settable.
        if (attr == MP_QSTR_grad && dest[1] != MP_OBJ_NULL) {
            // Optimizers and backward run float32 kernels over .grad and the tensor: only a
            // float32 gradient of the same shape, and none for int8 tensors (int8 layers
            // update inside train_step/backward(dy, opt)).
            if (dest[1] != mp_const_none) {
                mt_tensor_obj_t *g = mt_tensor_get(dest[1], "Tensor.grad");
                if (t->dtype == MT_INT8) {
                    mp_raise_ValueError(MP_ERROR_TEXT("Tensor.grad: int8 tensors have no gradient"));
                }
                if (!mt_shape_equal(&g->shape, &t->shape) || g->dtype != MT_FLOAT32) {
                    char a[64], b[64];
                    mp_raise_msg_varg(&mp_type_ValueError, MP_ERROR_TEXT("Tensor.grad must be float32 %s, not %q %s"),
                        mt_shape_str(&t->shape, a, sizeof(a)), mt_dtype_qstr(g->dtype), mt_shape_str(&g->shape, b, sizeof(b)));
                }
            }
            t->grad = dest[1];
            dest[0] = MP_OBJ_NULL;
        } else if (attr == MP_QSTR_scale && dest[1] != MP_OBJ_NULL) {
            float scale = (float)mp_obj_get_float(dest[1]);
            mt_qparams_check_obj(scale, t->zero_point, "Tensor.scale");
            t->scale = scale;
            dest[0] = MP_OBJ_NULL;
        } else if (attr == MP_QSTR_zero_point && dest[1] != MP_OBJ_NULL) {
            mp_int_t zero_point = mp_obj_get_int(dest[1]);
            mt_qparams_check_obj(t->scale, zero_point, "Tensor.zero_point");
            t->zero_point = (int32_t)zero_point;
            dest[0] = MP_OBJ_NULL;
        }
        return;
    }
    switch (attr) {
        case MP_QSTR_shape:
            dest[0] = mt_shape_to_tuple(&t->shape);
            break;
        case MP_QSTR_dtype:
            dest[0] = MP_OBJ_NEW_QSTR(mt_dtype_qstr(t->dtype));
            break;
        case MP_QSTR_size:
            dest[0] = mp_obj_new_int_from_uint(t->size);
            break;
        case MP_QSTR_ndim:
            dest[0] = MP_OBJ_NEW_SMALL_INT(t->shape.ndim);
            break;
        case MP_QSTR_grad:
            dest[0] = t->grad;
            break;
        case MP_QSTR_scale:
            dest[0] = mp_obj_new_float_from_f(t->scale);
            break;
        case MP_QSTR_zero_point:
            dest[0] = MP_OBJ_NEW_SMALL_INT(t->zero_point);
            break;
        default:
            dest[1] = MP_OBJ_SENTINEL;  // continue lookup in locals_dict
    }
}

static mp_obj_t tensor_unary_op(mp_unary_op_t op, mp_obj_t self_in) {
    mt_tensor_obj_t *t = MP_OBJ_TO_PTR(self_in);
    switch (op) {
        case MP_UNARY_OP_LEN:
            return MP_OBJ_NEW_SMALL_INT(t->shape.dim[0]);
        case MP_UNARY_OP_BOOL:
            return mp_obj_new_bool(t->size != 0);
        default:
            return MP_OBJ_NULL;
    }
}

// t[i]: an element of a 1-d tensor, or a zero-copy view of row i of an n-d one.
static mp_obj_t tensor_subscr(mp_obj_t self_in, mp_obj_t index, mp_obj_t value) {
    mt_tensor_obj_t *t = MP_OBJ_TO_PTR(self_in);
    if (value == MP_OBJ_NULL) {
        return MP_OBJ_NULL;  // deleting items is not supported
    }
    if (!mp_obj_is_int(index)) {
        mp_raise_msg_varg(&mp_type_TypeError, MP_ERROR_TEXT("Tensor indices must be ints, not %s"),
            mp_obj_get_type_str(index));
    }
    mt_tensor_sync(t);
    size_t i = mp_get_index(&mp_type_list, (size_t)t->shape.dim[0], index, false);
    if (t->shape.ndim == 1) {
        if (value == MP_OBJ_SENTINEL) {
            return tensor_get_item(t, i);
        }
        tensor_set_item(t, i, value);
        return mp_const_none;
    }
    mt_shape_t row;
    row.ndim = (uint8_t)(t->shape.ndim - 1);
    for (int d = 0; d < row.ndim; d++) {
        row.dim[d] = t->shape.dim[d + 1];
    }
    size_t row_bytes = mt_shape_size(&row) * mt_dtype_size(t->dtype);
    uint8_t *row_data = (uint8_t *)t->data + i * row_bytes;
    if (value != MP_OBJ_SENTINEL) {
        mp_raise_TypeError(MP_ERROR_TEXT("assign to a row with t[i].copy_from(...)"));
    }
    mt_tensor_obj_t *v = mt_tensor_view(&row, t->dtype, row_data, self_in);
    v->scale = t->scale;
    v->zero_point = t->zero_point;
    return MP_OBJ_FROM_PTR(v);
}

static mp_int_t tensor_get_buffer(mp_obj_t self_in, mp_buffer_info_t *info, mp_uint_t flags) {
    (void)flags;
    mt_tensor_obj_t *t = MP_OBJ_TO_PTR(self_in);
    mt_tensor_sync(t);
    info->buf = t->data;
    info->len = t->size * mt_dtype_size(t->dtype);
    info->typecode = dtype_typecode(t->dtype);
    return 0;
}

static mp_obj_t mt_zeros(size_t n_args, const mp_obj_t *pos_args, mp_map_t *kw_args) {
    enum { ARG_shape, ARG_dtype };
    static const mp_arg_t allowed_args[] = {
        { MP_QSTR_shape, MP_ARG_REQUIRED | MP_ARG_OBJ, {.u_obj = MP_OBJ_NULL} },
        { MP_QSTR_dtype, MP_ARG_OBJ, {.u_obj = MP_ROM_QSTR(MP_QSTR_float32)} },
    };
    mp_arg_val_t args[MP_ARRAY_SIZE(allowed_args)];
    mp_arg_parse_all(n_args, pos_args, kw_args, MP_ARRAY_SIZE(allowed_args), allowed_args, args);
    mt_shape_t shape;
    mt_shape_from_obj(args[ARG_shape].u_obj, &shape, "zeros: shape");
    return MP_OBJ_FROM_PTR(mt_tensor_new(&shape, mt_dtype_from_obj(args[ARG_dtype].u_obj), "zeros"));
}
MP_DEFINE_CONST_FUN_OBJ_KW(mt_zeros_obj, 1, mt_zeros);

// frombuffer(buf, shape=None, dtype=float32): a zero-copy view that keeps buf alive.
static mp_obj_t mt_frombuffer(size_t n_args, const mp_obj_t *pos_args, mp_map_t *kw_args) {
    enum { ARG_buffer, ARG_shape, ARG_dtype };
    static const mp_arg_t allowed_args[] = {
        { MP_QSTR_buffer, MP_ARG_REQUIRED | MP_ARG_OBJ, {.u_obj = MP_OBJ_NULL} },
        { MP_QSTR_shape, MP_ARG_OBJ, {.u_obj = mp_const_none} },
        { MP_QSTR_dtype, MP_ARG_OBJ, {.u_obj = MP_ROM_QSTR(MP_QSTR_float32)} },
    };
    mp_arg_val_t args[MP_ARRAY_SIZE(allowed_args)];
    mp_arg_parse_all(n_args, pos_args, kw_args, MP_ARRAY_SIZE(allowed_args), allowed_args, args);
    mp_obj_t buf = args[ARG_buffer].u_obj;
    mt_dtype_t dtype = mt_dtype_from_obj(args[ARG_dtype].u_obj);
    mp_buffer_info_t info;
    if (buf == mp_const_none || !mp_get_buffer(buf, &info, MP_BUFFER_RW)) {
        mp_raise_msg_varg(&mp_type_TypeError,
            MP_ERROR_TEXT("frombuffer: need a writable buffer, not %s"), mp_obj_get_type_str(buf));
    }
    size_t item = mt_dtype_size(dtype);
    if (((uintptr_t)info.buf & (item - 1)) != 0) {
        mp_raise_ValueError(MP_ERROR_TEXT("frombuffer: buffer is not aligned for the dtype"));
    }
    mt_shape_t shape;
    if (args[ARG_shape].u_obj == mp_const_none) {
        shape.ndim = 1;
        shape.dim[0] = (int32_t)(info.len / item);
        if (shape.dim[0] == 0) {
            mp_raise_ValueError(MP_ERROR_TEXT("frombuffer: buffer is empty"));
        }
    } else {
        mt_shape_from_obj(args[ARG_shape].u_obj, &shape, "frombuffer: shape");
    }
    if (mt_shape_size(&shape) * item != info.len) {
        mp_raise_msg_varg(&mp_type_ValueError,
            MP_ERROR_TEXT("frombuffer: shape needs %u bytes, the buffer has %u"),
            (unsigned)(mt_shape_size(&shape) * item), (unsigned)info.len);
    }
    return MP_OBJ_FROM_PTR(mt_tensor_view(&shape, dtype, info.buf, buf));
}
MP_DEFINE_CONST_FUN_OBJ_KW(mt_frombuffer_obj, 1, mt_frombuffer);

static const mp_rom_map_elem_t tensor_locals_dict_table[] = {
    { MP_ROM_QSTR(MP_QSTR_tolist), MP_ROM_PTR(&tensor_tolist_obj) },
    { MP_ROM_QSTR(MP_QSTR_fill), MP_ROM_PTR(&tensor_fill_obj) },
    { MP_ROM_QSTR(MP_QSTR_copy_from), MP_ROM_PTR(&tensor_copy_from_obj) },
    { MP_ROM_QSTR(MP_QSTR_reshape), MP_ROM_PTR(&tensor_reshape_obj) },
};
static MP_DEFINE_CONST_DICT(tensor_locals_dict, tensor_locals_dict_table);

MP_DEFINE_CONST_OBJ_TYPE(
    mt_tensor_type,
    MP_QSTR_Tensor,
    MP_TYPE_FLAG_NONE,
    make_new, tensor_make_new,
    print, tensor_print,
    attr, tensor_attr,
    unary_op, tensor_unary_op,
    subscr, tensor_subscr,
    buffer, tensor_get_buffer,
    locals_dict, &tensor_locals_dict
    );
