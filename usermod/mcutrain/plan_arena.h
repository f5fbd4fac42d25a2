// Plan storage that does not fragment the heap. Every buffer a top-level model plans
// (layer outputs, gradient buffers, scratch, loss buffers) is carved out of ONE block the
// model owns, its arena. The arena only grows, to the largest plan used, so a script that
// alternates input shapes (training batches, one-sample evaluation) re-plans without
// allocating once each shape has been seen: no stream of frees and allocations of
// differently sized buffers to fragment the GC heap between them.
//
// Planning runs in two passes over the same plan() code: a measuring pass that only adds
// up sizes (allocations return NULL and tensor headers keep what they had), then, with an
// arena large enough, a placing pass that hands out the memory. Tensor headers users see
// (layer.output, ...) stay GC objects; their data points into the arena, and their owner
// field keeps it alive (the GC does not follow pointers into the middle of a block).
#ifndef MCUTRAIN_PLAN_ARENA_H
#define MCUTRAIN_PLAN_ARENA_H

#include "py/obj.h"
#include "tensor.h"

typedef struct {
    mp_obj_t owner;          // a bytearray over the block (what planned tensors keep), or MP_OBJ_NULL
    uint8_t *block;
    size_t bytes;
} mt_plan_arena_t;

// Every planned buffer starts at a multiple of this (the int8 kernels' scratch needs 8).
#define MT_PLAN_ALIGN (8)

// Starts a pass: measuring if arena is NULL, else placing into it. mt_plan_end() ends it
// and gives the bytes the pass used (alignment included); mt_plan_abort() ends a failed one.
void mt_plan_begin(const mt_plan_arena_t *arena);
// Starts a placing pass that gives each buffer a GC block of its own: the fallback when the
// heap has no free run as long as the whole plan (it fragments again on the next re-plan).
void mt_plan_begin_loose(void);
size_t mt_plan_end(void);
void mt_plan_abort(void);
bool mt_plan_measuring(void);
// Marks the pass in progress as an inference plan (predict, evaluate): containers plan no
// gradient buffers and a Sequential lets its layers' outputs take turns in two buffers, as
// nothing reads an activation after the next layer has run. Off again at the next begin.
void mt_plan_for_inference(void);
bool mt_plan_inference(void);
// Whether the pass in progress places into `arena` (planning its owner as the top).
bool mt_plan_places_into(const mt_plan_arena_t *arena);

// `bytes` of the arena (NULL while measuring). Only plan() functions call these.
void *mt_plan_alloc(size_t bytes, const char *what);
// A tensor of `shape` in the arena, in the header `reuse` if given (set to the new shape),
// else in a new one. While measuring it returns `reuse` untouched.
mt_tensor_obj_t *mt_plan_tensor(mt_tensor_obj_t *reuse, const mt_shape_t *shape, uint8_t dtype, const char *what);
// The same over `data` the caller planned (a view of the scratch; NULL for views that
// point at their input at each forward).
mt_tensor_obj_t *mt_plan_header(mt_tensor_obj_t *reuse, const mt_shape_t *shape, uint8_t dtype, void *data);

// Makes the arena at least `bytes` large: the old block is dropped (for the GC to take back)
// before the new one is taken, so the two never need to fit together. False (and no
// arena) if the heap has no free run that long.
bool mt_plan_arena_reserve(mt_plan_arena_t *arena, size_t bytes);
// Drops the block; tensors still pointing into it keep it alive until they go.
void mt_plan_arena_drop(mt_plan_arena_t *arena);

#endif
