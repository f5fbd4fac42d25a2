// Plan storage that does not fragment the heap: bump allocation in a model's arena
// (plan_arena.h).
#include <string.h>

#include "py/runtime.h"
#include "plan_arena.h"

// The pass in progress. Planning is not reentrant (one model plans at a time, and plan()
// functions call no Python code), so one state suffices.
static struct {
    bool active;
    bool measuring;
    bool loose;                // placing into a GC block per buffer
    bool inference;            // planning for inference: no gradients, activations reused
    uint8_t *base;
    mp_obj_t owner;
    size_t capacity;
    size_t used;
} pass;

void mt_plan_begin(const mt_plan_arena_t *arena) {
    pass.active = true;
    pass.loose = false;
    pass.inference = false;
    pass.measuring = arena == NULL;
    pass.base = arena ? arena->block : NULL;
    pass.owner = arena ? arena->owner : MP_OBJ_NULL;
    pass.capacity = arena ? arena->bytes : 0;
    pass.used = 0;
}

void mt_plan_begin_loose(void) {
    mt_plan_begin(NULL);
    pass.measuring = false;
    pass.loose = true;
}

size_t mt_plan_end(void) {
    size_t used = pass.used;
    mt_plan_abort();
    return used;
}

void mt_plan_abort(void) {
    pass.active = false;
    pass.base = NULL;
    pass.owner = MP_OBJ_NULL;
}

bool mt_plan_measuring(void) {
    return pass.measuring;
}

void mt_plan_for_inference(void) {
    pass.inference = true;
}

bool mt_plan_inference(void) {
    return pass.inference;
}

bool mt_plan_places_into(const mt_plan_arena_t *arena) {
    return pass.active && !pass.measuring && arena->block == pass.base;
}

void *mt_plan_alloc(size_t bytes, const char *what) {
    if (!pass.active) {
        mp_raise_msg_varg(&mp_type_RuntimeError, MP_ERROR_TEXT("%s: planned outside a plan"), what);
    }
    size_t start = pass.used;
    size_t padded = (bytes + (MT_PLAN_ALIGN - 1)) & ~(size_t)(MT_PLAN_ALIGN - 1);
    if (padded < bytes || start + padded < start) {
        mp_raise_msg_varg(&mp_type_MemoryError, MP_ERROR_TEXT("%s: plan is too large"), what);
    }
    pass.used = start + padded;
    if (pass.measuring) {
        return NULL;
    }
    if (pass.loose) {
        void *data = m_malloc_maybe(bytes ? bytes : 1);
        if (data == NULL) {
            mp_raise_msg_varg(&mp_type_MemoryError, MP_ERROR_TEXT("%s: cannot allocate %u bytes"), what,
                (unsigned)bytes);
        }
        memset(data, 0, bytes);
        return data;
    }
    if (pass.used > pass.capacity) {
        // The placing pass asks for what the measuring one counted: this cannot happen.
        mp_raise_msg_varg(&mp_type_RuntimeError, MP_ERROR_TEXT("%s: plan outgrew its measure"), what);
    }
    return pass.base + start;
}

mt_tensor_obj_t *mt_plan_header(mt_tensor_obj_t *reuse, const mt_shape_t *shape, uint8_t dtype, void *data) {
    if (pass.measuring) {
        return reuse;
    }
    mt_tensor_obj_t *t = reuse ? reuse : mt_tensor_view(shape, dtype, NULL, MP_OBJ_NULL);
    t->dtype = dtype;
    t->shape = *shape;
    t->size = mt_shape_size(shape);
    t->scale = 1.0f;
    t->zero_point = 0;
    t->data = data;
    // A loose buffer is a block of its own, which the data pointer keeps alive.
    t->owner = data != NULL && !pass.loose ? pass.owner : MP_OBJ_NULL;
    // mt_tensor_sync finds the data again from the owner's buffer and this offset.
    t->offset = t->owner != MP_OBJ_NULL ? (size_t)((uint8_t *)data - pass.base) : 0;
    return t;
}

mt_tensor_obj_t *mt_plan_tensor(mt_tensor_obj_t *reuse, const mt_shape_t *shape, uint8_t dtype, const char *what) {
    size_t elems = mt_shape_size(shape), size = mt_dtype_size(dtype);
    if (elems > SIZE_MAX / size) {
        mp_raise_msg_varg(&mp_type_MemoryError, MP_ERROR_TEXT("%s: tensor is too large"), what);
    }
    void *data = mt_plan_alloc(elems * size, what);
    return mt_plan_header(reuse, shape, dtype, data);
}

void mt_plan_arena_drop(mt_plan_arena_t *arena) {
    arena->owner = MP_OBJ_NULL;
    arena->block = NULL;
    arena->bytes = 0;
}

bool mt_plan_arena_reserve(mt_plan_arena_t *arena, size_t bytes) {
    if (arena->block != NULL && arena->bytes >= bytes) {
        return true;
    }
    mt_plan_arena_drop(arena);
    uint8_t *block = m_malloc_maybe(bytes ? bytes : 1);
    if (block == NULL) {
        return false;
    }
    // The owner object planned tensors keep: a bytearray over the whole block.
    arena->owner = mp_obj_new_bytearray_by_ref(bytes, block);
    arena->block = block;
    arena->bytes = bytes;
    return true;
}
