#include <math.h>
#include <stddef.h>

#include "distill_f32.h"
#include "loss_f32.h"

void mt_distill_row_begin(mt_distill_row_t *row) {
    *row = (mt_distill_row_t) { 0 };
}

void mt_distill_row_max_f32(mt_distill_row_t *row, const float *s, const float *t, int n) {
    for (int j = 0; j < n; j++) {
        if (row->count == 0 || s[j] > row->s_max) {
            row->s_max = s[j];
        }
        if (row->count == 0 || t[j] > row->t_max) {
            row->t_max = t[j];
        }
        row->count++;
    }
}

void mt_distill_row_sums_f32(mt_distill_row_t *row, const mt_distill_params_t *p, const float *s, const float *t,
    int n) {
    const float inv_t = 1.0f / p->temperature;
    for (int j = 0; j < n; j++) {
        float ds = s[j] - row->s_max;
        row->s_sum += expf(ds);
        row->s_sum_t += expf(ds * inv_t);
        row->t_sum_t += expf((t[j] - row->t_max) * inv_t);
    }
}

void mt_distill_row_finish_f32(mt_distill_row_t *row, const mt_distill_params_t *p, const float *s, const float *t,
    int at, int n, int label, float scale, float *ds) {
    const float inv_t = 1.0f / p->temperature;
    const float hard = p->alpha * scale / row->s_sum;
    const float soft = (1.0f - p->alpha) * p->temperature * scale;
    for (int j = 0; j < n; j++) {
        // Both read before ds[j] is written: ds may alias either.
        float sj = (s[j] - row->s_max) * inv_t, tj = (t[j] - row->t_max) * inv_t;
        float pt = expf(tj) / row->t_sum_t;
        if (pt > 0.0f) {
            row->t_dot += pt * (tj - sj);  // a class the teacher gives no mass adds nothing (not 0 * inf)
        }
        if (at + j == label) {
            row->label_logit = s[j] - row->s_max;
        }
        if (ds) {
            float g = hard * expf(s[j] - row->s_max) + soft * (expf(sj) / row->s_sum_t - pt);
            ds[j] = at + j == label ? g - p->alpha * scale : g;
        }
    }
}

float mt_distill_row_loss(const mt_distill_row_t *row, const mt_distill_params_t *p) {
    // -log softmax(s)[label] = log(sum exp(s - s_max)) - (s[label] - s_max); each sum >= 1.
    float ce = logf(row->s_sum) - row->label_logit;
    // KL = sum pt * (log pt - log ps) with log pt = (t - t_max) / T - log t_sum_t and
    // log ps = (s - s_max) / T - log s_sum_t; clamped as rounding can leave it a hair below 0
    // (written so that a NaN from non-finite logits stays NaN, for train_step to refuse).
    float kl = row->t_dot - logf(row->t_sum_t) + logf(row->s_sum_t);
    kl = kl < 0.0f ? 0.0f : kl;
    // alpha = 1 ignores the teacher even where T^2 overflows (0 * inf would be NaN).
    float soft = p->alpha < 1.0f ? (1.0f - p->alpha) * p->temperature * p->temperature * kl : 0.0f;
    return p->alpha * ce + soft;
}

float mt_distillation_f32(const float *student, const float *teacher, const int32_t *labels, int rows, int classes,
    const mt_distill_params_t *p, float *dstudent) {
    if (!mt_labels_in_range(labels, rows, classes)) {
        return -1.0f;
    }
    if (rows <= 0) {
        return 0.0f;
    }
    const float inv_rows = 1.0f / (float)rows;
    float loss = 0.0f;
    for (int r = 0; r < rows; r++) {
        size_t at = (size_t)r * (size_t)classes;
        const float *s = student + at, *t = teacher + at;
        mt_distill_row_t row;
        mt_distill_row_begin(&row);
        mt_distill_row_max_f32(&row, s, t, classes);
        mt_distill_row_sums_f32(&row, p, s, t, classes);
        mt_distill_row_finish_f32(&row, p, s, t, 0, classes, (int)labels[r], inv_rows, dstudent ? dstudent + at : NULL);
        loss += mt_distill_row_loss(&row, p);
    }
    return loss * inv_rows;
}
