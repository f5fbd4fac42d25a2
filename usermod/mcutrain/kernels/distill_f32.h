// Knowledge distillation loss from student and teacher logits (Hinton et al. 2015):
//   L = alpha * CE(softmax(s), label) + (1 - alpha) * T^2 * KL(softmax(t / T) || softmax(s / T))
// averaged over the batch; T^2 keeps the soft term's gradient on the scale of the hard one's.
// Its gradient with respect to the student logits s, per row of a batch of B:
//   alpha * (softmax(s) - onehot(label)) / B + (1 - alpha) * T * (softmax(s / T) - softmax(t / T)) / B
// Logits are (rows, classes) row-major. Every softmax subtracts its row maximum, so any
// finite logits give a finite loss.
#ifndef MCUTRAIN_KERNELS_DISTILL_F32_H
#define MCUTRAIN_KERNELS_DISTILL_F32_H

#include <stdint.h>

typedef struct {
    float temperature;  // T > 0
    float alpha;        // weight of the hard-label term, in [0, 1]
} mt_distill_params_t;

// One row's statistics, gathered over spans of its classes in three passes (max, sums,
// finish) so a caller can widen float16 or int8 logits a span at a time into small buffers.
typedef struct {
    float s_max, t_max;    // row maxima of student and teacher logits
    float s_sum;           // sum exp(s - s_max)
    float s_sum_t;         // sum exp((s - s_max) / T)
    float t_sum_t;         // sum exp((t - t_max) / T)
    float t_dot;           // sum softmax(t / T) * (t - t_max - (s - s_max)) / T
    float label_logit;     // s[label] - s_max
    int count;             // classes seen by the max pass
} mt_distill_row_t;

void mt_distill_row_begin(mt_distill_row_t *row);
// Pass 1 over every span of the row: the maxima.
void mt_distill_row_max_f32(mt_distill_row_t *row, const float *s, const float *t, int n);
// Pass 2: the three softmax denominators.
void mt_distill_row_sums_f32(mt_distill_row_t *row, const mt_distill_params_t *p, const float *s, const float *t,
    int n);
// Pass 3, for the span of classes [at, at + n): the KL sum and, unless ds is NULL, the
// gradient of the batch mean (scale = 1 / rows) into ds, which may alias s or t.
void mt_distill_row_finish_f32(mt_distill_row_t *row, const mt_distill_params_t *p, const float *s, const float *t,
    int at, int n, int label, float scale, float *ds);
// The row's loss once all three passes have run.
float mt_distill_row_loss(const mt_distill_row_t *row, const mt_distill_params_t *p);

// The whole batch from fp32 logits: returns the mean loss and writes its gradient into
// dstudent (NULL: none; it may alias student). Returns a negative value if a label is out
// of range (nothing is written then).
float mt_distillation_f32(const float *student, const float *teacher, const int32_t *labels, int rows, int classes,
    const mt_distill_params_t *p, float *dstudent);

#endif
