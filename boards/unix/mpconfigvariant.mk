# Nothing here may need a git submodule: Debian's source tarball ships them empty.
FROZEN_MANIFEST ?= $(VARIANT_DIR)/../manifest.py
MICROPY_PY_BTREE = 0
MICROPY_PY_FFI = 0
MICROPY_PY_SSL = 0
MICROPY_SSL_AXTLS = 0
MICROPY_SSL_MBEDTLS = 0
