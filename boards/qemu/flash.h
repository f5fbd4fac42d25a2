#ifndef MCUTRAIN_QEMU_FLASH_H
#define MCUTRAIN_QEMU_FLASH_H

#include "py/obj.h"

extern const mp_obj_type_t qemu_flash_type;

#endif
