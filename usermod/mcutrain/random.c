#include "py/runtime.h"
#include "random.h"

// Module state lives in a root pointer rather than a C static, so a soft reset of the
// board does not carry a half-used sequence into the next script.
MP_REGISTER_ROOT_POINTER(uint32_t mcutrain_random_state);

void mt_random_seed(uint32_t seed) {
    // Mix the seed so that small seeds (0, 1, 2) give unrelated sequences; never 0.
    uint32_t s = seed * 2654435761u + 0x9e3779b9u;
    MP_STATE_VM(mcutrain_random_state) = s ? s : 1;
}

uint32_t mt_random_u32(void) {
    uint32_t x = MP_STATE_VM(mcutrain_random_state);
    if (x == 0) {
        x = 1;
    }
    // xorshift32 (Marsaglia 2003)
    x ^= x << 13;
    x ^= x >> 17;
    x ^= x << 5;
    MP_STATE_VM(mcutrain_random_state) = x;
    return x;
}

uint32_t mt_random_peek(void) {
    uint32_t x = MP_STATE_VM(mcutrain_random_state);
    return x ? x : 1;
}

float mt_random_uniform(void) {
    return (float)(mt_random_u32() >> 8) * (1.0f / 16777216.0f);
}
