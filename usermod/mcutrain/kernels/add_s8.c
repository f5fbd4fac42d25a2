#include <string.h>

#include "add_s8.h"

// Two integers' exponents may differ by this much before the smaller product is rounded:
// |product| < 2^39, so each shifted product stays below 2^61 and their sum, plus the final
// rounding constant, below 2^63.
#define MAX_SPREAD 22

// 2^e as a float, e in [-126, 127].
static float pow2f(int e) {
    uint32_t bits = (uint32_t)(e + 127) << 23;
    float f;
    memcpy(&f, &bits, sizeof f);
    return f;
}

int mt_add_s8_make(float a_scale, float b_scale, float y_scale, mt_add_s8_t *out) {
    mt_requant_t qa, qb;
    if (mt_quant_multiplier(a_scale / y_scale, &qa) != 0 || mt_quant_multiplier(b_scale / y_scale, &qb) != 0) {
        return -1;
    }
    int32_t hi, lo;
    if (qa.multiplier == 0 && qb.multiplier == 0) {
        hi = lo = 30;
    } else if (qa.multiplier == 0 || qb.multiplier == 0) {
        hi = lo = qa.multiplier ? qa.shift : qb.shift;
    } else {
        hi = qa.shift > qb.shift ? qa.shift : qb.shift;
        lo = qa.shift < qb.shift ? qa.shift : qb.shift;
    }
    const int32_t e = lo > hi - MAX_SPREAD ? lo : hi - MAX_SPREAD;
    out->m_a = qa.multiplier;
    out->m_b = qb.multiplier;
    out->sh_a = qa.multiplier ? qa.shift - e : 0;
    out->sh_b = qb.multiplier ? qb.shift - e : 0;
    out->right = 31 - e;    // shift <= 30 and >= -31 (mt_quant_multiplier): right in [1, 62]
    out->unit = y_scale * pow2f(-out->right);
    return 0;
}

// q * m at the common exponent.
static inline int64_t term(int32_t q, int32_t m, int32_t sh) {
    const int64_t p = (int64_t)q * m;
    if (sh >= 0) {
        return p * ((int64_t)1 << sh);
    }
    const int r = -sh > 62 ? 62 : -sh;
    return (p + ((int64_t)1 << (r - 1))) >> r;
}

void mt_add_s8(const mt_add_s8_t *k, const int8_t *a, int32_t zp_a, const int8_t *b, int32_t zp_b,
    int8_t *y, int32_t zp_y, int32_t qmin, int32_t qmax, size_t n, mt_range_t *range) {
    const int64_t half = (int64_t)1 << (k->right - 1);
    int64_t lo = 0, hi = 0;
    for (size_t i = 0; i < n; i++) {
        const int64_t sum = term(a[i] - zp_a, k->m_a, k->sh_a) + term(b[i] - zp_b, k->m_b, k->sh_b);
        if (i == 0 || sum < lo) {
            lo = sum;
        }
        if (i == 0 || sum > hi) {
            hi = sum;
        }
        if (y != NULL) {
            int64_t r = (sum + half) >> k->right;
            r = r < -512 ? -512 : r > 512 ? 512 : r;
            int32_t v = (int32_t)r + zp_y;
            y[i] = (int8_t)(v < qmin ? qmin : v > qmax ? qmax : v);
        }
    }
    if (range != NULL) {
        range->min = (float)lo * k->unit;
        range->max = (float)hi * k->unit;
    }
}
