// Semihosting operations (Arm "Semihosting for AArch32 and AArch64", which
// QEMU also implements for RISC-V); the trap itself is board_semihosting().
#include <string.h>
#include "board.h"
#include "semihosting.h"

enum {
    SYS_OPEN = 0x01,
    SYS_CLOSE = 0x02,
    SYS_WRITE = 0x05,
    SYS_READ = 0x06,
    SYS_SEEK = 0x0a,
    SYS_FLEN = 0x0c,
    SYS_GET_CMDLINE = 0x15,
    SYS_EXIT_EXTENDED = 0x20,    // carries a status on 32-bit targets, unlike SYS_EXIT
};

#define ADP_STOPPED_APPLICATION_EXIT (0x20026)

int semihosting_open(const char *path, int mode) {
    uintptr_t args[3] = { (uintptr_t)path, (uintptr_t)mode, strlen(path) };
    return (int)board_semihosting(SYS_OPEN, (uintptr_t)args);
}

int semihosting_close(int handle) {
    uintptr_t args[1] = { (uintptr_t)handle };
    return (int)board_semihosting(SYS_CLOSE, (uintptr_t)args);
}

size_t semihosting_read(int handle, void *buf, size_t len) {
    uintptr_t args[3] = { (uintptr_t)handle, (uintptr_t)buf, len };
    return board_semihosting(SYS_READ, (uintptr_t)args);
}

size_t semihosting_write(int handle, const void *buf, size_t len) {
    uintptr_t args[3] = { (uintptr_t)handle, (uintptr_t)buf, len };
    return board_semihosting(SYS_WRITE, (uintptr_t)args);
}

int semihosting_seek(int handle, uint32_t pos) {
    uintptr_t args[2] = { (uintptr_t)handle, pos };
    return (int)board_semihosting(SYS_SEEK, (uintptr_t)args);
}

long semihosting_flen(int handle) {
    uintptr_t args[1] = { (uintptr_t)handle };
    return (long)(intptr_t)board_semihosting(SYS_FLEN, (uintptr_t)args);
}

int semihosting_cmdline(char *buf, size_t len) {
    uintptr_t args[2] = { (uintptr_t)buf, len };
    int ret = (int)board_semihosting(SYS_GET_CMDLINE, (uintptr_t)args);
    if (ret != 0 && len > 0) {
        buf[0] = '\0';
    }
    return ret;
}

void semihosting_exit(int status) {
    uintptr_t args[2] = { ADP_STOPPED_APPLICATION_EXIT, (uintptr_t)status };
    board_semihosting(SYS_EXIT_EXTENDED, (uintptr_t)args);
    for (;;) {
    }
}

const char *semihosting_arg(const char *key, char *buf, size_t len) {
    static char cmdline[256];
    if (semihosting_cmdline(cmdline, sizeof(cmdline)) != 0) {
        return NULL;
    }
    size_t key_len = strlen(key);
    for (const char *p = cmdline; *p;) {
        const char *end = strchr(p, ' ');
        size_t tok_len = end ? (size_t)(end - p) : strlen(p);
        if (tok_len > key_len && strncmp(p, key, key_len) == 0 && p[key_len] == '=') {
            size_t n = tok_len - key_len - 1;
            if (n >= len) {
                return NULL;
            }
            memcpy(buf, p + key_len + 1, n);
            buf[n] = '\0';
            return buf;
        }
        p += tok_len;
        while (*p == ' ') {
            p++;
        }
    }
    return NULL;
}
