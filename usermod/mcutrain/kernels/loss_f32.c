#include <math.h>
#include <stddef.h>

#include "loss_f32.h"

bool mt_labels_in_range(const int32_t *labels, int rows, int classes) {
    for (int r = 0; r < rows; r++) {
        if (labels[r] < 0 || labels[r] >= classes) {
            return false;
        }
    }
    return true;
}

float mt_cross_entropy_f32(const float *logits, const int32_t *labels, int rows, int classes,
    float *dlogits) {
    // Check every label first: on a bad one nothing may have been written.
    if (!mt_labels_in_range(labels, rows, classes)) {
        return -1.0f;
    }
    if (rows <= 0) {
        return 0.0f;
    }
    const float inv_rows = 1.0f / (float)rows;
    float loss = 0.0f;
    for (int r = 0; r < rows; r++) {
        const float *x = logits + (size_t)r * (size_t)classes;
        float *d = dlogits ? dlogits + (size_t)r * (size_t)classes : NULL;
        const int label = (int)labels[r];
        float max = x[0];
        for (int j = 1; j < classes; j++) {
            if (x[j] > max) {
                max = x[j];
            }
        }
        // Read before the gradient overwrites it when dlogits aliases logits.
        const float label_logit = x[label];
        float sum = 0.0f;
        if (d) {
            // Keep exp(x - max) in the output so it is computed once per element.
            for (int j = 0; j < classes; j++) {
                float e = expf(x[j] - max);
                d[j] = e;
                sum += e;
            }
        } else {
            for (int j = 0; j < classes; j++) {
                sum += expf(x[j] - max);
            }
        }
        // -log softmax[label] = log(sum exp(x - max)) - (x[label] - max); sum >= 1.
        loss += logf(sum) + (max - label_logit);
        if (d) {
            const float scale = inv_rows / sum;
            for (int j = 0; j < classes; j++) {
                d[j] *= scale;
            }
            d[label] -= inv_rows;
        }
    }
    return loss * inv_rows;
}

float mt_mse_f32(const float *pred, const float *target, int n, float *dpred) {
    if (n <= 0) {
        return 0.0f;
    }
    float sum = 0.0f;
    if (dpred) {
        const float grad_scale = 2.0f / (float)n;
        // pred[i] is read before dpred[i] is written, so dpred may alias pred.
        for (int i = 0; i < n; i++) {
            float d = pred[i] - target[i];
            sum += d * d;
            dpred[i] = grad_scale * d;
        }
    } else {
        for (int i = 0; i < n; i++) {
            float d = pred[i] - target[i];
            sum += d * d;
        }
    }
    return sum / (float)n;
}
