// qemu: what only the emulated boards have — the host-file flash, the emulator's
// command line, and leaving the emulator with a status.
#include "py/runtime.h"
#include "py/gc.h"
#include "semihosting.h"
#include "flash.h"

static mp_obj_t qemu_exit(size_t n_args, const mp_obj_t *args) {
    semihosting_exit(n_args ? mp_obj_get_int(args[0]) : 0);
}
static MP_DEFINE_CONST_FUN_OBJ_VAR_BETWEEN(qemu_exit_obj, 0, 1, qemu_exit);

static mp_obj_t qemu_cmdline(void) {
    char buf[256];
    semihosting_cmdline(buf, sizeof(buf));
    return mp_obj_new_str(buf, strlen(buf));
}
static MP_DEFINE_CONST_FUN_OBJ_0(qemu_cmdline_obj, qemu_cmdline);

static mp_obj_t qemu_heap_size(void) {
    gc_info_t info;
    gc_info(&info);
    return mp_obj_new_int_from_uint(info.total);
}
static MP_DEFINE_CONST_FUN_OBJ_0(qemu_heap_size_obj, qemu_heap_size);

static const mp_rom_map_elem_t qemu_module_globals_table[] = {
    { MP_ROM_QSTR(MP_QSTR___name__), MP_ROM_QSTR(MP_QSTR_qemu) },
    { MP_ROM_QSTR(MP_QSTR_Flash), MP_ROM_PTR(&qemu_flash_type) },
    { MP_ROM_QSTR(MP_QSTR_exit), MP_ROM_PTR(&qemu_exit_obj) },
    { MP_ROM_QSTR(MP_QSTR_cmdline), MP_ROM_PTR(&qemu_cmdline_obj) },
    { MP_ROM_QSTR(MP_QSTR_heap_size), MP_ROM_PTR(&qemu_heap_size_obj) },
};
static MP_DEFINE_CONST_DICT(qemu_module_globals, qemu_module_globals_table);

const mp_obj_module_t qemu_module = {
    .base = { &mp_type_module },
    .globals = (mp_obj_dict_t *)&qemu_module_globals,
};

MP_REGISTER_MODULE(MP_QSTR_qemu, qemu_module);
