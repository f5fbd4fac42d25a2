// qemu.Flash: the board's flash, a host file reached through semihosting
// (QEMU: -semihosting-config arg=flash=/abs/path). Block device protocol for
// vfs.VfsLfs2, extended form (with offsets).
#include "py/runtime.h"
#include "py/mperrno.h"
#include "extmod/vfs.h"
#include "semihosting.h"
#include "flash.h"

#define FLASH_BLOCK_SIZE (4096)

typedef struct _qemu_flash_obj_t {
    mp_obj_base_t base;
    int handle;
    uint32_t block_count;
} qemu_flash_obj_t;

static qemu_flash_obj_t qemu_flash_obj = { { &qemu_flash_type }, -1, 0 };

// Opens the flash image named on the emulator command line; false if there is none.
static bool qemu_flash_open(void) {
    if (qemu_flash_obj.handle >= 0) {
        return true;
    }
    char path[200];
    if (semihosting_arg("flash", path, sizeof(path)) == NULL) {
        return false;
    }
    int handle = semihosting_open(path, SEMIHOSTING_MODE_RB_PLUS);
    if (handle < 0) {
        return false;
    }
    long len = semihosting_flen(handle);
    if (len < 2 * FLASH_BLOCK_SIZE) {
        semihosting_close(handle);
        return false;
    }
    qemu_flash_obj.handle = handle;
    qemu_flash_obj.block_count = (uint32_t)len / FLASH_BLOCK_SIZE;
    return true;
}

static mp_obj_t qemu_flash_make_new(const mp_obj_type_t *type, size_t n_args, size_t n_kw, const mp_obj_t *args) {
    mp_arg_check_num(n_args, n_kw, 0, 0, false);
    if (!qemu_flash_open()) {
        mp_raise_msg(&mp_type_OSError,
            MP_ERROR_TEXT("no flash image: start QEMU with -semihosting-config arg=flash=/path/to/image"));
    }
    return MP_OBJ_FROM_PTR(&qemu_flash_obj);
}

static void qemu_flash_transfer(mp_obj_t block_num, mp_obj_t buf_in, size_t n_args, const mp_obj_t *offset, bool write) {
    mp_buffer_info_t buf;
    mp_get_buffer_raise(buf_in, &buf, write ? MP_BUFFER_READ : MP_BUFFER_WRITE);
    mp_int_t block = mp_obj_get_int(block_num);
    mp_int_t block_offset = n_args == 3 ? mp_obj_get_int(offset[0]) : 0;
    if (block < 0 || block_offset < 0) {
        mp_raise_ValueError(MP_ERROR_TEXT("Flash: negative block or offset"));
    }
    uint64_t pos = (uint64_t)block * FLASH_BLOCK_SIZE + (uint64_t)block_offset;
    if (pos + buf.len > (uint64_t)qemu_flash_obj.block_count * FLASH_BLOCK_SIZE) {
        mp_raise_ValueError(MP_ERROR_TEXT("Flash: access beyond the end of the image"));
    }
    size_t left;
    if (semihosting_seek(qemu_flash_obj.handle, (uint32_t)pos) != 0) {
        left = buf.len;
    } else if (write) {
        left = semihosting_write(qemu_flash_obj.handle, buf.buf, buf.len);
    } else {
        left = semihosting_read(qemu_flash_obj.handle, buf.buf, buf.len);
    }
    if (left != 0) {
        mp_raise_OSError(MP_EIO);
    }
}

static mp_obj_t qemu_flash_readblocks(size_t n_args, const mp_obj_t *args) {
    qemu_flash_transfer(args[1], args[2], n_args - 1, &args[3], false);
    return mp_const_none;
}
static MP_DEFINE_CONST_FUN_OBJ_VAR_BETWEEN(qemu_flash_readblocks_obj, 3, 4, qemu_flash_readblocks);

static mp_obj_t qemu_flash_writeblocks(size_t n_args, const mp_obj_t *args) {
    qemu_flash_transfer(args[1], args[2], n_args - 1, &args[3], true);
    return mp_const_none;
}
static MP_DEFINE_CONST_FUN_OBJ_VAR_BETWEEN(qemu_flash_writeblocks_obj, 3, 4, qemu_flash_writeblocks);

static mp_obj_t qemu_flash_ioctl(mp_obj_t self_in, mp_obj_t op_in, mp_obj_t arg_in) {
    switch (mp_obj_get_int(op_in)) {
        case MP_BLOCKDEV_IOCTL_BLOCK_COUNT:
            return MP_OBJ_NEW_SMALL_INT(qemu_flash_obj.block_count);
        case MP_BLOCKDEV_IOCTL_BLOCK_SIZE:
            return MP_OBJ_NEW_SMALL_INT(FLASH_BLOCK_SIZE);
        case MP_BLOCKDEV_IOCTL_INIT:
        case MP_BLOCKDEV_IOCTL_DEINIT:
        case MP_BLOCKDEV_IOCTL_SYNC:
        case MP_BLOCKDEV_IOCTL_BLOCK_ERASE:
            // A host file needs no erase, and every write has reached it already.
            return MP_OBJ_NEW_SMALL_INT(0);
        default:
            return mp_const_none;
    }
}
static MP_DEFINE_CONST_FUN_OBJ_3(qemu_flash_ioctl_obj, qemu_flash_ioctl);

static const mp_rom_map_elem_t qemu_flash_locals_dict_table[] = {
    { MP_ROM_QSTR(MP_QSTR_readblocks), MP_ROM_PTR(&qemu_flash_readblocks_obj) },
    { MP_ROM_QSTR(MP_QSTR_writeblocks), MP_ROM_PTR(&qemu_flash_writeblocks_obj) },
    { MP_ROM_QSTR(MP_QSTR_ioctl), MP_ROM_PTR(&qemu_flash_ioctl_obj) },
};
static MP_DEFINE_CONST_DICT(qemu_flash_locals_dict, qemu_flash_locals_dict_table);

MP_DEFINE_CONST_OBJ_TYPE(
    qemu_flash_type,
    MP_QSTR_Flash,
    MP_TYPE_FLAG_NONE,
    make_new, qemu_flash_make_new,
    locals_dict, &qemu_flash_locals_dict
    );
