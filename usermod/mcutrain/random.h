// The module's random numbers (parameter init, shuffles): a small xorshift generator,
// reseeded at import and by mt.seed(n) so runs repeat exactly.
#ifndef MCUTRAIN_RANDOM_H
#define MCUTRAIN_RANDOM_H

#include <stdint.h>

void mt_random_seed(uint32_t seed);
uint32_t mt_random_u32(void);
// The current state, without advancing it (never 0).
uint32_t mt_random_peek(void);
// Uniform in [0, 1).
float mt_random_uniform(void);

#endif
