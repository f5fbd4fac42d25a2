// Host file access through semihosting: the flash image lives in a host file.
#ifndef MCUTRAIN_QEMU_SEMIHOSTING_H
#define MCUTRAIN_QEMU_SEMIHOSTING_H

#include <stddef.h>
#include <stdint.h>

// Returns a handle, or -1.
int semihosting_open(const char *path, int mode);
int semihosting_close(int handle);
// These return the number of bytes NOT transferred (0 on success), as the protocol does.
size_t semihosting_read(int handle, void *buf, size_t len);
size_t semihosting_write(int handle, const void *buf, size_t len);
int semihosting_seek(int handle, uint32_t pos);
long semihosting_flen(int handle);
// The emulator's command line (QEMU: -semihosting-config arg=...), NUL-terminated.
int semihosting_cmdline(char *buf, size_t len);
void semihosting_exit(int status) __attribute__((noreturn));

// Value of "key=value" in the command line, copied into buf; NULL if absent.
const char *semihosting_arg(const char *key, char *buf, size_t len);

#define SEMIHOSTING_MODE_RB_PLUS (3)    // "rb+": read/write an existing file

#endif
