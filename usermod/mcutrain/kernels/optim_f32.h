// fp32 optimizer updates, PyTorch conventions (weight decay is L2 added to the gradient).
#ifndef MCUTRAIN_KERNELS_OPTIM_F32_H
#define MCUTRAIN_KERNELS_OPTIM_F32_H

#include <stddef.h>

typedef struct {
    float lr;
    float momentum;       // 0 disables the velocity buffer
    float weight_decay;
} mt_sgd_params_t;

// w -= lr * v with v = momentum * v + (g + weight_decay * w); velocity may be NULL
// when momentum is 0 (then w -= lr * (g + weight_decay * w)).
void mt_sgd_f32_step(const mt_sgd_params_t *p, float *w, const float *g, float *velocity,
    size_t n);

// The fused form, split around a gradient pass that accumulates straight into a
// buffer instead of materializing g:
//   with momentum:    begin: v = momentum * v + weight_decay * w;   pass adds g into v
//                     (alpha 1);   end: w -= lr * v.
//   without momentum: begin: w *= 1 - lr * weight_decay;  pass adds -lr * g into w;
//                     end: nothing.
// Both give exactly the update of mt_sgd_f32_step up to rounding.
void mt_sgd_f32_fused_begin(const mt_sgd_params_t *p, float *w, float *velocity, size_t n);
void mt_sgd_f32_fused_end(const mt_sgd_params_t *p, float *w, const float *velocity, size_t n);

typedef struct {
    float lr;
    float beta1, beta2;
    float eps;
    float weight_decay;
    int step;             // 1 for the first update (bias correction)
} mt_adam_params_t;

// Adam (Kingma & Ba), PyTorch's torch.optim.Adam: m and v are first and second moments.
void mt_adam_f32_step(const mt_adam_params_t *p, float *w, const float *g, float *m, float *v,
    size_t n);

#endif
