// mcutrain's unix variant: the standard unix build (with its common extras), plus
// the _mcutrain module and our device package frozen in.
#define MICROPY_CONFIG_ROM_LEVEL (MICROPY_CONFIG_ROM_LEVEL_EXTRA_FEATURES)
#include "variants/mpconfigvariant_common.h"
